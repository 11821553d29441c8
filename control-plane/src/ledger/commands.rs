//! The commands: credit a purchase, reverse it, grant, consume, expire a block. Each reads the
//! projection at its version, decides one entry, and [`append`]s it at that version; a lost race
//! ([`LedgerError::Conflict`]) runs it again from a fresh read, a bounded number of times. Each is
//! idempotent by its `(org, kind, ref)`: run again, it returns the entry already written.
//!
//! The `_on` variants run on the caller's connection — inside its transaction if it has one (READ
//! COMMITTED: a retry must see the winner's commit), each attempt in a savepoint.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

use super::projection::{balance_on, Draw};
use super::stream::{append, find, NewEntry};
use super::{Entry, Kind, LedgerError};

/// Attempts per command before the conflict is returned.
const MAX_ATTEMPTS: u32 = 100;

/// One command, before it read the stream.
#[derive(Debug, Clone)]
pub(super) enum Command<'a> {
    Credit {
        kind: Kind,
        tokens: i64,
        reference: &'a str,
        expires_at: Option<DateTime<Utc>>,
        data: serde_json::Value,
    },
    /// Reverses the credit of kind `of` (purchased or granted) under `reference`.
    Reverse {
        reference: &'a str,
        of: Kind,
    },
    Consume {
        tokens: i64,
        request_id: &'a str,
    },
    Expire {
        block: Uuid,
        now: DateTime<Utc>,
    },
}

/// What a command did: the entry (`None`: nothing to record) and whether this run wrote it.
#[derive(Debug)]
pub(super) struct Outcome {
    pub entry: Option<Entry>,
    pub fresh: bool,
}

impl Command<'_> {
    fn kind(&self) -> Kind {
        match self {
            Command::Credit { kind, .. } => *kind,
            Command::Reverse { .. } => Kind::Refunded,
            Command::Consume { .. } => Kind::Consumed,
            Command::Expire { .. } => Kind::Expired,
        }
    }

    fn reference(&self) -> String {
        match self {
            Command::Credit { reference, .. } | Command::Reverse { reference, .. } => {
                (*reference).to_owned()
            }
            Command::Consume { request_id, .. } => (*request_id).to_owned(),
            Command::Expire { block, .. } => format!("expire:{block}"),
        }
    }

    fn check(&self) -> Result<(), LedgerError> {
        match self {
            Command::Credit { tokens, .. } if *tokens <= 0 => {
                return Err(LedgerError::field("tokens", "must be positive"));
            }
            Command::Consume { tokens, .. } if *tokens < 0 => {
                return Err(LedgerError::field("tokens", "must not be negative"));
            }
            _ => {}
        }
        let reference = self.reference();
        if reference.is_empty() || reference.len() > 200 {
            return Err(LedgerError::field("ref", "must be 1 to 200 bytes"));
        }
        Ok(())
    }
}

/// Runs `cmd` on `conn`, retrying lost races.
pub(super) async fn run(
    conn: &mut PgConnection,
    org: Uuid,
    cmd: &Command<'_>,
) -> Result<Outcome, LedgerError> {
    cmd.check()?;
    let mut attempt = 0;
    loop {
        let mut tx = conn.begin().await?;
        match attempt_once(&mut tx, org, cmd).await {
            Ok(outcome) => {
                tx.commit().await?;
                return Ok(outcome);
            }
            Err(e) if e.is_retryable() && attempt + 1 < MAX_ATTEMPTS => {
                tx.rollback().await?;
                attempt += 1;
                tokio::time::sleep(jitter(attempt)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// A short random pause (grows with the attempt, at most ~10 ms) so racing writers spread out.
fn jitter(attempt: u32) -> Duration {
    let cap = u128::from(attempt.min(10)) * 1000;
    let micros = Uuid::new_v4().as_u128() % cap.max(1);
    Duration::from_micros(u64::try_from(micros).unwrap_or(0))
}

async fn attempt_once(
    conn: &mut PgConnection,
    org: Uuid,
    cmd: &Command<'_>,
) -> Result<Outcome, LedgerError> {
    if let Some(done) = find(conn, org, cmd.kind(), &cmd.reference()).await? {
        same_command(cmd, &done)?;
        return Ok(Outcome {
            entry: Some(done),
            fresh: false,
        });
    }
    let head = balance_on(conn, org).await?;
    let Some(new) = decide(conn, org, cmd, head.debt, head.version).await? else {
        return Ok(Outcome {
            entry: None,
            fresh: false,
        });
    };
    let mut written = append(conn, org, head.version, vec![new]).await?;
    Ok(Outcome {
        entry: written.pop(),
        fresh: true,
    })
}

/// A repeated credit must repeat the first one (the ref was reused for another amount otherwise).
fn same_command(cmd: &Command<'_>, done: &Entry) -> Result<(), LedgerError> {
    match cmd {
        Command::Credit { tokens, expires_at, reference, .. }
            if *tokens != done.tokens || *expires_at != done.expires_at =>
        {
            Err(LedgerError::Mismatch(format!(
                "`{reference}` already credited {} tokens (expiring {:?}); it cannot be reused for another credit",
                done.tokens, done.expires_at
            )))
        }
        _ => Ok(()),
    }
}

/// The entry `cmd` writes given the stream's state, or `None` if there is nothing to record.
async fn decide(
    conn: &mut PgConnection,
    org: Uuid,
    cmd: &Command<'_>,
    debt: i64,
    version: i64,
) -> Result<Option<NewEntry>, LedgerError> {
    let now = Utc::now();
    let entry = |kind, tokens, expires_at, data| NewEntry {
        kind,
        tokens,
        reference: cmd.reference(),
        expires_at,
        occurred_at: now,
        data,
    };
    Ok(match cmd {
        Command::Credit {
            kind,
            tokens,
            expires_at,
            data,
            ..
        } => {
            let mut data = data.clone();
            let repaid = debt.min(*tokens);
            if let Some(obj) = data.as_object_mut() {
                obj.insert("repaid".into(), json!(repaid));
            }
            Some(entry(*kind, *tokens, *expires_at, data))
        }
        Command::Reverse { reference, of } => {
            let block = block_of(conn, org, *of, reference).await?;
            block.map(|(id, remaining)| {
                entry(Kind::Refunded, remaining, None, json!({ "block": id }))
            })
        }
        // No entries yet: the org has no prepaid account, its usage is not metered here.
        Command::Consume { .. } if version == 0 => None,
        Command::Consume { tokens, .. } => {
            let (draws, overdraft) = plan_draws(&open_blocks(conn, org).await?, *tokens);
            Some(entry(
                Kind::Consumed,
                *tokens,
                None,
                json!({ "draws": draws, "overdraft": overdraft }),
            ))
        }
        Command::Expire { block, now } => {
            let due = due_block(conn, *block, *now).await?;
            due.map(|remaining| entry(Kind::Expired, remaining, None, json!({ "block": block })))
                .map(|e| NewEntry {
                    occurred_at: *now,
                    ..e
                })
        }
    })
}

/// The block credited as `of` under `reference` and what remains of it.
async fn block_of(
    conn: &mut PgConnection,
    org: Uuid,
    of: Kind,
    reference: &str,
) -> Result<Option<(Uuid, i64)>, LedgerError> {
    Ok(sqlx::query_as(
        "SELECT id, remaining FROM ledger.credit_blocks WHERE org_id = $1 AND kind = $3 AND ref = $2",
    )
    .bind(org)
    .bind(reference)
    .bind(of.as_str())
    .fetch_optional(conn)
    .await?)
}

/// What remains of `block` if it is due at `now` and not empty.
async fn due_block(
    conn: &mut PgConnection,
    block: Uuid,
    now: DateTime<Utc>,
) -> Result<Option<i64>, LedgerError> {
    Ok(sqlx::query_scalar(
        "SELECT remaining FROM ledger.credit_blocks WHERE id = $1 AND remaining > 0 AND expires_at <= $2",
    )
    .bind(block)
    .bind(now)
    .fetch_optional(conn)
    .await?)
}

/// The org's non-empty blocks in drawing order: soonest expiry first, never-expiring last.
async fn open_blocks(conn: &mut PgConnection, org: Uuid) -> Result<Vec<(Uuid, i64)>, LedgerError> {
    Ok(sqlx::query_as(
        "SELECT id, remaining FROM ledger.credit_blocks WHERE org_id = $1 AND remaining > 0
         ORDER BY expires_at ASC NULLS LAST, created_at, id",
    )
    .bind(org)
    .fetch_all(conn)
    .await?)
}

/// Draws `tokens` from `blocks` in order; what they cannot cover is the overdraft.
pub(super) fn plan_draws(blocks: &[(Uuid, i64)], tokens: i64) -> (Vec<Draw>, i64) {
    let mut left = tokens;
    let mut draws = Vec::new();
    for &(block, remaining) in blocks {
        if left == 0 {
            break;
        }
        let take = remaining.min(left);
        if take > 0 {
            draws.push(Draw {
                block,
                tokens: take,
            });
            left -= take;
        }
    }
    (draws, left)
}

async fn on_pool(pool: &PgPool, org: Uuid, cmd: Command<'_>) -> Result<Outcome, LedgerError> {
    let mut conn = pool.acquire().await?;
    run(&mut conn, org, &cmd).await
}

fn credited(org: Uuid, outcome: Outcome) -> Result<Entry, LedgerError> {
    outcome.entry.ok_or(LedgerError::Conflict(org))
}

/// Credits a purchase of `tokens` (a new block expiring at `expires_at`), once per `purchase_ref`.
pub async fn credit_purchase(
    pool: &PgPool,
    org: Uuid,
    tokens: i64,
    purchase_ref: &str,
    expires_at: Option<DateTime<Utc>>,
) -> Result<Entry, LedgerError> {
    let mut conn = pool.acquire().await?;
    credit_purchase_on(&mut conn, org, tokens, purchase_ref, expires_at).await
}

/// [`credit_purchase`] on the caller's connection (and transaction).
pub async fn credit_purchase_on(
    conn: &mut PgConnection,
    org: Uuid,
    tokens: i64,
    purchase_ref: &str,
    expires_at: Option<DateTime<Utc>>,
) -> Result<Entry, LedgerError> {
    let cmd = Command::Credit {
        kind: Kind::Purchased,
        tokens,
        reference: purchase_ref,
        expires_at,
        data: json!({}),
    };
    credited(org, run(conn, org, &cmd).await?)
}

/// Reverses purchase `purchase_ref`: refunds what remains of its block (possibly 0 tokens, if it was
/// spent or expired). `None` if nothing was credited for it.
pub async fn reverse_purchase(
    pool: &PgPool,
    org: Uuid,
    purchase_ref: &str,
) -> Result<Option<Entry>, LedgerError> {
    Ok(on_pool(
        pool,
        org,
        Command::Reverse {
            reference: purchase_ref,
            of: Kind::Purchased,
        },
    )
    .await?
    .entry)
}

/// [`reverse_purchase`] on the caller's connection (and transaction).
pub async fn reverse_purchase_on(
    conn: &mut PgConnection,
    org: Uuid,
    purchase_ref: &str,
) -> Result<Option<Entry>, LedgerError> {
    Ok(run(
        conn,
        org,
        &Command::Reverse {
            reference: purchase_ref,
            of: Kind::Purchased,
        },
    )
    .await?
    .entry)
}

/// Reverses grant `grant_ref` (a subscription saga's compensation): takes back what remains of its
/// block, as a `refunded` entry. Idempotent; `None` if nothing was granted under it.
pub async fn reverse_grant(
    pool: &PgPool,
    org: Uuid,
    grant_ref: &str,
) -> Result<Option<Entry>, LedgerError> {
    let cmd = Command::Reverse {
        reference: grant_ref,
        of: Kind::Granted,
    };
    Ok(on_pool(pool, org, cmd).await?.entry)
}

/// Grants `tokens` (plan tokens, support credit), once per `grant_ref`.
pub async fn grant(
    pool: &PgPool,
    org: Uuid,
    tokens: i64,
    grant_ref: &str,
    expires_at: Option<DateTime<Utc>>,
) -> Result<Entry, LedgerError> {
    let mut conn = pool.acquire().await?;
    grant_on(&mut conn, org, tokens, grant_ref, expires_at).await
}

/// [`grant`] on the caller's connection (and transaction).
pub async fn grant_on(
    conn: &mut PgConnection,
    org: Uuid,
    tokens: i64,
    grant_ref: &str,
    expires_at: Option<DateTime<Utc>>,
) -> Result<Entry, LedgerError> {
    Ok(
        grant_with(conn, org, tokens, grant_ref, expires_at, json!({}))
            .await?
            .0,
    )
}

/// [`grant_on`] with detail for the entry's `data`; also says whether this call wrote the entry.
pub(super) async fn grant_with(
    conn: &mut PgConnection,
    org: Uuid,
    tokens: i64,
    grant_ref: &str,
    expires_at: Option<DateTime<Utc>>,
    data: serde_json::Value,
) -> Result<(Entry, bool), LedgerError> {
    let cmd = Command::Credit {
        kind: Kind::Granted,
        tokens,
        reference: grant_ref,
        expires_at,
        data,
    };
    let outcome = run(conn, org, &cmd).await?;
    let fresh = outcome.fresh;
    Ok((credited(org, outcome)?, fresh))
}

/// Debits `tokens` consumed by request `request_id`, once per request. Usage beyond the credit is
/// recorded all the same (an overdraft: the balance goes negative). `None` when the org has no
/// ledger account (no entries: it does not run on prepaid tokens) or `tokens` is 0.
pub async fn consume(
    pool: &PgPool,
    org: Uuid,
    tokens: i64,
    request_id: &str,
) -> Result<Option<Entry>, LedgerError> {
    let mut conn = pool.acquire().await?;
    consume_on(&mut conn, org, tokens, request_id).await
}

/// [`consume`] on the caller's connection (and transaction).
pub async fn consume_on(
    conn: &mut PgConnection,
    org: Uuid,
    tokens: i64,
    request_id: &str,
) -> Result<Option<Entry>, LedgerError> {
    if tokens == 0 {
        return Ok(None);
    }
    Ok(run(conn, org, &Command::Consume { tokens, request_id })
        .await?
        .entry)
}

/// Expires what remains of `block` if it is due at `now`; `Some` only when this call wrote the entry.
pub(super) async fn expire_block(
    conn: &mut PgConnection,
    org: Uuid,
    block: Uuid,
    now: DateTime<Utc>,
) -> Result<Option<Entry>, LedgerError> {
    let outcome = run(conn, org, &Command::Expire { block, now }).await?;
    Ok(outcome.entry.filter(|_| outcome.fresh))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_take_blocks_in_order_and_overdraw_the_rest() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let (draws, over) = plan_draws(&[(a, 5), (b, 10)], 12);
        assert_eq!(
            draws,
            vec![
                Draw {
                    block: a,
                    tokens: 5
                },
                Draw {
                    block: b,
                    tokens: 7
                }
            ]
        );
        assert_eq!(over, 0);
        let (draws, over) = plan_draws(&[(a, 5)], 8);
        assert_eq!(
            draws,
            vec![Draw {
                block: a,
                tokens: 5
            }]
        );
        assert_eq!(over, 3);
        let (draws, over) = plan_draws(&[], 4);
        assert!(draws.is_empty());
        assert_eq!(over, 4);
    }
}
