//! The projections — `ledger.balances` and `ledger.credit_blocks` — as one pure fold over entries
//! ([`Effect`]), applied live by [`apply`] as each entry is appended and replayed whole by [`rebuild`]
//! and [`verify`].

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

use super::stream::{Row, COLUMNS};
use super::{Balance, Entry, Kind, LedgerError};

/// One draw of a consumption (or a refund, an expiry) from a credit block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Draw {
    pub block: Uuid,
    pub tokens: i64,
}

/// How an entry moves the blocks, as its `data` records it.
#[derive(Debug, Default, Deserialize)]
struct Moves {
    #[serde(default)]
    draws: Vec<Draw>,
    #[serde(default)]
    overdraft: i64,
    #[serde(default)]
    repaid: i64,
    #[serde(default)]
    block: Option<Uuid>,
}

/// What one entry does to the projections.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Effect {
    /// purchased, granted, consumed, refunded, expired.
    columns: [i64; 5],
    balance: i64,
    debt: i64,
    /// A new block with this remainder (credits only).
    new_block: Option<i64>,
    draws: Vec<Draw>,
}

impl Effect {
    pub(super) fn of(e: &Entry) -> Effect {
        // Only the commands write `data`, always in this shape; an entry without moves (or a hand-made
        // one) moves no block, which `verify` would then report as drift.
        let moves: Moves = serde_json::from_value(e.data.clone()).unwrap_or_default();
        let mut fx = Effect::default();
        let column = match e.kind {
            Kind::Purchased => 0,
            Kind::Granted => 1,
            Kind::Consumed => 2,
            Kind::Refunded => 3,
            Kind::Expired => 4,
        };
        fx.columns[column] = e.tokens;
        match e.kind {
            Kind::Purchased | Kind::Granted => {
                fx.balance = e.tokens;
                fx.debt = -moves.repaid;
                fx.new_block = Some(e.tokens - moves.repaid);
            }
            Kind::Consumed => {
                fx.balance = -e.tokens;
                fx.debt = moves.overdraft;
                fx.draws = moves.draws;
            }
            Kind::Refunded | Kind::Expired => {
                fx.balance = -e.tokens;
                fx.draws = moves
                    .block
                    .map(|block| Draw {
                        block,
                        tokens: e.tokens,
                    })
                    .into_iter()
                    .collect();
            }
        }
        fx
    }
}

/// Applies `entry` to the live projection on `conn` (the append's transaction); returns the balance.
/// (The inserted row takes `greatest(debt, 0)`: CHECKs apply to it even when it conflicts, and a
/// first entry never repays.) The balance row goes first: [`rebuild`] locks it, so an append waits there, not between blocks.
pub(super) async fn apply(conn: &mut PgConnection, entry: &Entry) -> Result<Balance, LedgerError> {
    let fx = Effect::of(entry);
    let row: BalanceRow = sqlx::query_as(
        "INSERT INTO ledger.balances AS b (org_id, version, purchased, granted, consumed, refunded, expired, balance, debt, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, greatest($9, 0), $10)
         ON CONFLICT (org_id) DO UPDATE SET version = EXCLUDED.version,
           purchased = b.purchased + EXCLUDED.purchased, granted = b.granted + EXCLUDED.granted,
           consumed = b.consumed + EXCLUDED.consumed, refunded = b.refunded + EXCLUDED.refunded,
           expired = b.expired + EXCLUDED.expired, balance = b.balance + EXCLUDED.balance,
           debt = b.debt + $9, updated_at = EXCLUDED.updated_at
         RETURNING org_id, version, purchased, granted, consumed, refunded, expired, balance, debt",
    )
    .bind(entry.org)
    .bind(entry.version)
    .bind(fx.columns[0])
    .bind(fx.columns[1])
    .bind(fx.columns[2])
    .bind(fx.columns[3])
    .bind(fx.columns[4])
    .bind(fx.balance)
    .bind(fx.debt)
    .bind(entry.occurred_at)
    .fetch_one(&mut *conn)
    .await?;
    if let Some(remaining) = fx.new_block {
        insert_block(conn, entry, remaining).await?;
    }
    for d in &fx.draws {
        sqlx::query("UPDATE ledger.credit_blocks SET remaining = remaining - $2 WHERE id = $1")
            .bind(d.block)
            .bind(d.tokens)
            .execute(&mut *conn)
            .await?;
    }
    Ok(row.balance(entry.occurred_at))
}

async fn insert_block(
    conn: &mut PgConnection,
    credit: &Entry,
    remaining: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO ledger.credit_blocks (id, org_id, kind, ref, tokens, remaining, expires_at, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(credit.id)
    .bind(credit.org)
    .bind(credit.kind.as_str())
    .bind(&credit.reference)
    .bind(credit.tokens)
    .bind(remaining)
    .bind(credit.expires_at)
    .bind(credit.occurred_at)
    .execute(conn)
    .await?;
    Ok(())
}

#[derive(Debug, sqlx::FromRow)]
struct BalanceRow {
    org_id: Uuid,
    version: i64,
    purchased: i64,
    granted: i64,
    consumed: i64,
    refunded: i64,
    expired: i64,
    balance: i64,
    debt: i64,
}

impl BalanceRow {
    fn balance(self, as_of: DateTime<Utc>) -> Balance {
        Balance {
            org: self.org_id,
            tokens: self.balance,
            purchased: self.purchased,
            granted: self.granted,
            consumed: self.consumed,
            refunded: self.refunded,
            expired: self.expired,
            version: self.version,
            as_of,
            debt: self.debt,
        }
    }
}

const BALANCE_SQL: &str =
    "SELECT org_id, version, purchased, granted, consumed, refunded, expired, balance, debt
     FROM ledger.balances WHERE org_id = $1";

/// `org`'s balance as of now (zeros for an org without entries).
pub async fn balance(pool: &PgPool, org: Uuid) -> Result<Balance, LedgerError> {
    let mut conn = pool.acquire().await?;
    balance_on(&mut conn, org).await
}

/// `org`'s balance read on `conn`.
pub(super) async fn balance_on(conn: &mut PgConnection, org: Uuid) -> Result<Balance, LedgerError> {
    let row: Option<BalanceRow> = sqlx::query_as(BALANCE_SQL)
        .bind(org)
        .fetch_optional(conn)
        .await?;
    Ok(match row {
        Some(row) => row.balance(Utc::now()),
        None => Replay::new(org).balance(),
    })
}

/// What the data plane's mirror should hold as "credited": `purchased + granted − refunded −
/// expired`, with the stream version it reflects.
pub async fn credited_total(pool: &PgPool, org: Uuid) -> Result<(i64, i64), LedgerError> {
    let b = balance(pool, org).await?;
    Ok((b.purchased + b.granted - b.refunded - b.expired, b.version))
}

/// A block as the replay rebuilds it.
#[derive(Debug, Clone, PartialEq)]
struct Block {
    kind: Kind,
    reference: String,
    tokens: i64,
    remaining: i64,
    expires_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
}

/// The projections rebuilt in memory from a stream.
#[derive(Debug)]
struct Replay {
    org: Uuid,
    version: i64,
    columns: [i64; 5],
    balance: i64,
    debt: i64,
    blocks: BTreeMap<Uuid, Block>,
}

impl Replay {
    fn new(org: Uuid) -> Replay {
        Replay {
            org,
            version: 0,
            columns: [0; 5],
            balance: 0,
            debt: 0,
            blocks: BTreeMap::new(),
        }
    }

    fn apply(&mut self, e: &Entry) {
        let fx = Effect::of(e);
        self.version = e.version;
        for (c, d) in self.columns.iter_mut().zip(fx.columns) {
            *c += d;
        }
        self.balance += fx.balance;
        self.debt += fx.debt;
        if let Some(remaining) = fx.new_block {
            let block = Block {
                kind: e.kind,
                reference: e.reference.clone(),
                tokens: e.tokens,
                remaining,
                expires_at: e.expires_at,
                created_at: e.occurred_at,
            };
            self.blocks.insert(e.id, block);
        }
        for d in fx.draws {
            if let Some(b) = self.blocks.get_mut(&d.block) {
                b.remaining -= d.tokens;
            }
        }
    }

    fn balance(&self) -> Balance {
        let [purchased, granted, consumed, refunded, expired] = self.columns;
        Balance {
            org: self.org,
            tokens: self.balance,
            purchased,
            granted,
            consumed,
            refunded,
            expired,
            version: self.version,
            as_of: Utc::now(),
            debt: self.debt,
        }
    }
}

/// How the live projection differs from the stream's replay.
#[derive(Debug, Clone, PartialEq)]
pub struct Drift {
    pub org: Uuid,
    /// The live balance, and the replay's.
    pub live: Balance,
    pub replayed: Balance,
    /// Blocks whose live remainder differs: (block, live, replayed); `None` = missing on that side.
    pub blocks: Vec<(Uuid, Option<i64>, Option<i64>)>,
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (l, r) = (&self.live, &self.replayed);
        write!(
            f,
            "org {}: live v{} tokens {} (p {} g {} c {} r {} e {} debt {}) vs replay v{} tokens {} (p {} g {} c {} r {} e {} debt {}); {} block(s) differ",
            self.org, l.version, l.tokens, l.purchased, l.granted, l.consumed, l.refunded, l.expired, l.debt,
            r.version, r.tokens, r.purchased, r.granted, r.consumed, r.refunded, r.expired, r.debt,
            self.blocks.len()
        )
    }
}

/// Replays `org`'s stream on `conn`, row by row.
async fn replay(conn: &mut PgConnection, org: Uuid) -> Result<Replay, LedgerError> {
    let sql = format!("SELECT {COLUMNS} FROM ledger.entries WHERE org_id = $1 ORDER BY version");
    let mut state = Replay::new(org);
    let mut rows = sqlx::query_as::<_, Row>(&sql).bind(org).fetch(&mut *conn);
    while let Some(row) = rows.try_next().await? {
        state.apply(&row.entry()?);
    }
    Ok(state)
}

/// The difference between the live projection and `state`, if any.
async fn drift(conn: &mut PgConnection, state: &Replay) -> Result<Option<Drift>, LedgerError> {
    let live = balance_on(conn, state.org).await?;
    let live_blocks: Vec<(Uuid, i64)> =
        sqlx::query_as("SELECT id, remaining FROM ledger.credit_blocks WHERE org_id = $1")
            .bind(state.org)
            .fetch_all(&mut *conn)
            .await?;
    let live_blocks: BTreeMap<Uuid, i64> = live_blocks.into_iter().collect();
    let mut blocks: Vec<(Uuid, Option<i64>, Option<i64>)> = Vec::new();
    for (id, b) in &state.blocks {
        let live = live_blocks.get(id).copied();
        if live != Some(b.remaining) {
            blocks.push((*id, live, Some(b.remaining)));
        }
    }
    for (id, remaining) in &live_blocks {
        if !state.blocks.contains_key(id) {
            blocks.push((*id, Some(*remaining), None));
        }
    }
    let replayed = state.balance();
    let same = |a: &Balance, b: &Balance| {
        Balance {
            as_of: b.as_of,
            ..a.clone()
        } == *b
    };
    if same(&live, &replayed) && blocks.is_empty() {
        return Ok(None);
    }
    Ok(Some(Drift {
        org: state.org,
        live,
        replayed,
        blocks,
    }))
}

/// Replays `org`'s stream and compares it with the live projection: `Err(LedgerError::Drift)` when
/// they differ. Also checks `Σ remaining − debt = balance` on the replay.
pub async fn verify(pool: &PgPool, org: Uuid) -> Result<(), LedgerError> {
    let mut tx = crate::db::begin(pool).await?;
    // One snapshot for the replay and the live read.
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await?;
    let state = replay(&mut tx, org).await?;
    let found = drift(&mut tx, &state).await?;
    tx.commit().await?;
    let remaining: i64 = state.blocks.values().map(|b| b.remaining).sum();
    match found {
        Some(d) => Err(LedgerError::Drift(Box::new(d))),
        None if remaining - state.debt != state.balance => {
            let b = state.balance();
            Err(LedgerError::Drift(Box::new(Drift {
                org,
                live: b.clone(),
                replayed: b,
                blocks: Vec::new(),
            })))
        }
        None => Ok(()),
    }
}

/// Rebuilds `org`'s projections from its stream (balance row and blocks rewritten) and returns the
/// balance. Appends wait meanwhile (the balance row is locked first, where [`apply`] starts).
pub async fn rebuild(pool: &PgPool, org: Uuid) -> Result<Balance, LedgerError> {
    let mut conn = pool.acquire().await?;
    let mut tx = conn.begin().await?;
    sqlx::query("SELECT 1 FROM ledger.balances WHERE org_id = $1 FOR UPDATE")
        .bind(org)
        .execute(&mut *tx)
        .await?;
    let state = replay(&mut tx, org).await?;
    if state.version == 0 {
        tx.commit().await?;
        return Ok(state.balance());
    }
    write(&mut tx, &state).await?;
    tx.commit().await?;
    Ok(state.balance())
}

/// Overwrites the projections of `state.org` with `state`.
async fn write(conn: &mut PgConnection, state: &Replay) -> Result<(), LedgerError> {
    let [p, g, c, r, e] = state.columns;
    sqlx::query(
        "INSERT INTO ledger.balances (org_id, version, purchased, granted, consumed, refunded, expired, balance, debt)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (org_id) DO UPDATE SET version = $2, purchased = $3, granted = $4, consumed = $5,
           refunded = $6, expired = $7, balance = $8, debt = $9, updated_at = now()",
    )
    .bind(state.org)
    .bind(state.version)
    .bind(p).bind(g).bind(c).bind(r).bind(e)
    .bind(state.balance)
    .bind(state.debt)
    .execute(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM ledger.credit_blocks WHERE org_id = $1")
        .bind(state.org)
        .execute(&mut *conn)
        .await?;
    for (id, b) in &state.blocks {
        sqlx::query(
            "INSERT INTO ledger.credit_blocks (id, org_id, kind, ref, tokens, remaining, expires_at, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(id)
        .bind(state.org)
        .bind(b.kind.as_str())
        .bind(&b.reference)
        .bind(b.tokens)
        .bind(b.remaining)
        .bind(b.expires_at)
        .bind(b.created_at)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}
