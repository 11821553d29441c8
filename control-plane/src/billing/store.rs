//! Purchases and sagas as the API shows them, and the purchase's creation (idempotent by
//! `(org, Idempotency-Key)`: the purchase row, its saga and the audit row commit together).

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::purchase::{self, PurchaseData};
use super::saga::{self, NewSaga, SagaState};
use super::Settings;
use crate::audit;
use crate::http::{FieldError, Page, Problem, ProblemKind};
use crate::tenancy::orgs;

/// Largest purchase, in tokens (keeps every amount far inside `i64` cents).
pub const MAX_TOKENS: i64 = 1_000_000_000_000;
/// Advisory-lock class of purchase creation per `(org, key)`.
const CREATE_LOCK: i32 = 0x0b_0010;

/// One attempt in a saga's history.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct StepRecord {
    #[serde(skip)]
    pub saga_id: Uuid,
    pub seq: i32,
    pub step: String,
    /// `forward` or `compensate`.
    pub direction: String,
    /// `started`, `succeeded` or `failed`.
    pub status: String,
    pub attempt: i32,
    #[schema(value_type = Object)]
    pub detail: Value,
    pub at: DateTime<Utc>,
}

/// A token purchase.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Purchase {
    pub id: Uuid,
    pub org: Uuid,
    pub tokens: i64,
    /// In the currency's minor unit (cents).
    pub amount: i64,
    pub currency: String,
    /// `pending`, `completed`, `compensated` or `needs_attention`.
    pub status: String,
    pub payment_intent: Option<String>,
    pub steps: Vec<StepRecord>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Why it was compensated or needs attention.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(sqlx::FromRow)]
struct PurchaseRow {
    id: Uuid,
    org_id: Uuid,
    tokens: i64,
    amount_cents: i64,
    currency: String,
    state: String,
    payment_intent: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    reason: Option<String>,
    needs_attention_reason: Option<String>,
}

impl PurchaseRow {
    fn into_purchase(self, steps: Vec<StepRecord>) -> Purchase {
        let status = match SagaState::parse(&self.state) {
            Some(SagaState::Running | SagaState::Compensating) | None => "pending",
            Some(s) => s.as_str(),
        };
        Purchase {
            id: self.id,
            org: self.org_id,
            tokens: self.tokens,
            amount: self.amount_cents,
            currency: self.currency,
            status: status.to_owned(),
            payment_intent: self.payment_intent,
            steps,
            created_at: self.created_at,
            updated_at: self.updated_at,
            reason: self.needs_attention_reason.or(self.reason),
        }
    }
}

const PURCHASE_COLUMNS: &str =
    "p.id, p.org_id, p.tokens, p.amount_cents, p.currency, s.state, p.payment_intent,
     p.created_at, s.updated_at, s.reason, s.needs_attention_reason
     FROM billing.purchases p JOIN billing.sagas s ON s.id = p.id";

/// The step histories of `ids`, by saga.
async fn steps_of<'e>(
    db: impl sqlx::PgExecutor<'e>,
    ids: &[Uuid],
) -> Result<Vec<StepRecord>, sqlx::Error> {
    sqlx::query_as(
        "SELECT saga_id, seq, step, direction, status, attempt, detail, at FROM billing.saga_steps
         WHERE saga_id = ANY($1) ORDER BY saga_id, seq",
    )
    .bind(ids)
    .fetch_all(db)
    .await
}

fn take_steps(all: &mut Vec<StepRecord>, id: Uuid) -> Vec<StepRecord> {
    let (mine, rest) = std::mem::take(all)
        .into_iter()
        .partition(|s| s.saga_id == id);
    *all = rest;
    mine
}

/// One purchase with its step history.
pub async fn get(pool: &PgPool, id: Uuid) -> Result<Purchase, Problem> {
    get_on(&mut *pool.acquire().await?, id).await
}

/// [`get`] on one connection: in a transaction, the purchase as that transaction sees it.
async fn get_on(conn: &mut PgConnection, id: Uuid) -> Result<Purchase, Problem> {
    let sql = format!("SELECT {PURCHASE_COLUMNS} WHERE p.id = $1");
    let row: Option<PurchaseRow> = sqlx::query_as(&sql)
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    let row = row
        .ok_or_else(|| Problem::new(ProblemKind::NotFound, format!("purchase `{id}` not found")))?;
    let steps = steps_of(&mut *conn, &[id]).await?;
    Ok(row.into_purchase(steps))
}

/// An org's purchases, oldest first, `limit` per page after the purchase `after`.
pub async fn list(
    pool: &PgPool,
    org: Uuid,
    limit: i64,
    after: Option<Uuid>,
) -> Result<Page<Purchase>, Problem> {
    let sql = format!(
        "SELECT {PURCHASE_COLUMNS} WHERE p.org_id = $1
           AND ($2::uuid IS NULL OR (p.created_at, p.id) > (SELECT created_at, id FROM billing.purchases WHERE id = $2))
         ORDER BY p.created_at, p.id LIMIT $3"
    );
    let rows: Vec<PurchaseRow> = sqlx::query_as(&sql)
        .bind(org)
        .bind(after)
        .bind(limit + 1)
        .fetch_all(pool)
        .await?;
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let mut steps = steps_of(pool, &ids).await?;
    let items = rows
        .into_iter()
        .map(|r| {
            let mine = take_steps(&mut steps, r.id);
            r.into_purchase(mine)
        })
        .collect();
    Ok(Page::from_rows(items, limit, |p: &Purchase| {
        p.id.to_string()
    }))
}

/// The price of `tokens` at `per_million` cents per million tokens, rounded up to a whole cent.
pub fn price_cents(tokens: i64, per_million: i64) -> Option<i64> {
    let cents = (i128::from(tokens) * i128::from(per_million) + 999_999) / 1_000_000;
    i64::try_from(cents).ok().filter(|c| *c > 0)
}

/// A purchase request, validated.
#[derive(Debug, Clone)]
pub struct NewPurchase<'a> {
    pub org: Uuid,
    pub tokens: i64,
    pub idempotency_key: &'a str,
    pub actor: &'a str,
}

fn validate(req: &NewPurchase<'_>, settings: &Settings) -> Result<i64, Problem> {
    let mut errors = Vec::new();
    if !(1..=MAX_TOKENS).contains(&req.tokens) {
        errors.push(FieldError::new(
            "tokens",
            format!("must be 1..={MAX_TOKENS}"),
        ));
    }
    let key = req.idempotency_key;
    if key.is_empty() || key.len() > 255 || !key.chars().all(|c| c.is_ascii_graphic()) {
        errors.push(FieldError::new(
            "Idempotency-Key",
            "required: 1 to 255 visible ASCII characters",
        ));
    }
    let amount = price_cents(req.tokens, settings.price_per_million_tokens_cents);
    match (errors.is_empty(), amount) {
        (true, Some(a)) => Ok(a),
        (true, None) => Err(Problem::field("tokens", "too few tokens to cost a cent")),
        (false, _) => Err(Problem::invalid(errors)),
    }
}

/// Creates the purchase and its saga (due at once), or returns the one `(org, key)` already made.
/// Returns it and whether it was created now. The same key with another request is a conflict.
pub async fn create(
    pool: &PgPool,
    now: DateTime<Utc>,
    settings: &Settings,
    req: &NewPurchase<'_>,
) -> Result<(Purchase, bool), Problem> {
    let amount = validate(req, settings)?;
    orgs::get(pool, req.org).await?;
    let hash = hex::encode(Sha256::digest(json!({ "tokens": req.tokens }).to_string()));
    let mut tx = crate::db::begin(pool).await?;
    // Concurrent duplicates queue here; the unique (org, key) is the backstop.
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2 || ':' || $3))")
        .bind(CREATE_LOCK)
        .bind(req.org.to_string())
        .bind(req.idempotency_key)
        .execute(&mut *tx)
        .await?;
    let existing: Option<(Uuid, String)> = sqlx::query_as(
        "SELECT id, request_hash FROM billing.purchases WHERE org_id = $1 AND idempotency_key = $2",
    )
    .bind(req.org)
    .bind(req.idempotency_key)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some((id, seen)) = existing {
        drop(tx);
        if seen != hash {
            let detail = format!(
                "Idempotency-Key `{}` was used for a different purchase request",
                req.idempotency_key
            );
            return Err(Problem::new(ProblemKind::Conflict, detail));
        }
        return Ok((get(pool, id).await?, false));
    }
    let id = Uuid::new_v4();
    insert(&mut tx, id, req, (amount, &hash), settings, now).await?;
    // The purchase as created (`pending`), read before the commit: the commit's `NOTIFY` can start
    // another replica's worker on it at once, which may complete it before a read after the commit.
    let created = get_on(&mut tx, id).await?;
    tx.commit().await?;
    Ok((created, true))
}

/// Writes a new purchase `id` — its saga, its row, its audit event — on `tx`.
async fn insert(
    tx: &mut PgConnection,
    id: Uuid,
    req: &NewPurchase<'_>,
    (amount, hash): (i64, &str),
    settings: &Settings,
    now: DateTime<Utc>,
) -> Result<(), Problem> {
    let data = PurchaseData {
        org_id: req.org,
        tokens: req.tokens,
        amount_cents: amount,
        currency: settings.currency.clone(),
        expires_at: Some(now + settings.credit_validity),
        payment_intent: None,
        compensations: Vec::new(),
    };
    let new = NewSaga {
        id,
        kind: purchase::KIND,
        org_id: req.org,
        first_step: purchase::FORWARD[0],
        data: serde_json::to_value(&data)
            .map_err(|e| Problem::new(ProblemKind::Internal, e.to_string()))?,
    };
    saga::insert(&mut *tx, &new, now, now + settings.saga_deadline).await?;
    sqlx::query(
        "INSERT INTO billing.purchases (id, org_id, tokens, amount_cents, currency, idempotency_key, request_hash, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(id)
    .bind(req.org)
    .bind(req.tokens)
    .bind(amount)
    .bind(&settings.currency)
    .bind(req.idempotency_key)
    .bind(hash)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    let change = audit::Change {
        actor: req.actor,
        action: "purchase.create",
        object_kind: "purchase",
        object_id: id.to_string(),
        detail: json!({ "org": req.org, "tokens": req.tokens, "amount": amount, "idempotency_key": req.idempotency_key }),
    };
    audit::with_event(
        &mut *tx,
        super::purchase::TOPIC,
        "purchase",
        "purchase.created",
        change,
    )
    .await?;
    Ok(())
}

/// A saga as operators see it, with its step history.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct SagaView {
    pub id: Uuid,
    /// E.g. `purchase`.
    pub kind: String,
    #[sqlx(rename = "org_id")]
    pub org: Uuid,
    /// `running`, `compensating`, `completed`, `compensated` or `needs_attention`.
    pub state: String,
    /// The step to run next (the last one run, once finished).
    pub step: String,
    /// Attempts of `step` so far.
    pub attempts: i32,
    pub next_run_at: DateTime<Utc>,
    pub deadline: DateTime<Utc>,
    /// Why compensation started.
    pub reason: Option<String>,
    pub needs_attention_reason: Option<String>,
    #[sqlx(skip)]
    pub steps: Vec<StepRecord>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Sagas (optionally in one state), oldest first, `limit` per page after the saga `after`.
pub async fn list_sagas(
    pool: &PgPool,
    state: Option<SagaState>,
    limit: i64,
    after: Option<Uuid>,
) -> Result<Page<SagaView>, Problem> {
    let mut rows: Vec<SagaView> = sqlx::query_as(
        "SELECT id, kind, org_id, state, step, attempts, next_run_at, deadline, reason,
                needs_attention_reason, created_at, updated_at
         FROM billing.sagas
         WHERE ($1::text IS NULL OR state = $1)
           AND ($2::uuid IS NULL OR (created_at, id) > (SELECT created_at, id FROM billing.sagas WHERE id = $2))
         ORDER BY created_at, id LIMIT $3",
    )
    .bind(state.map(SagaState::as_str))
    .bind(after)
    .bind(limit + 1)
    .fetch_all(pool)
    .await?;
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let mut steps = steps_of(pool, &ids).await?;
    for row in &mut rows {
        row.steps = take_steps(&mut steps, row.id);
    }
    Ok(Page::from_rows(rows, limit, |s: &SagaView| {
        s.id.to_string()
    }))
}

/// Sagas per state, every state listed (0 when none): the `leaky_sagas` gauge, read at scrape.
pub async fn saga_counts(pool: &PgPool) -> Result<Vec<(&'static str, i64)>, sqlx::Error> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT state, count(*) FROM billing.sagas GROUP BY state")
            .fetch_all(pool)
            .await?;
    let states = [
        "running",
        "compensating",
        "completed",
        "compensated",
        "needs_attention",
    ];
    Ok(states
        .into_iter()
        .map(|s| {
            let n = rows.iter().find(|(r, _)| r == s).map_or(0, |(_, n)| *n);
            (s, n)
        })
        .collect())
}
