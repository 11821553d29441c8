//! Plans and subscriptions in Postgres (`billing.plans`, `billing.subscriptions`, their history): the
//! admin API's writes (each audited, in one transaction with the saga it starts and its outbox
//! event), the reads, and the renewal job ([`renew_due`]).
//!
//! **Upgrade or downgrade** is decided by price: a dearer plan is an upgrade, charged now for the rest
//! of the period ([`prorate`]); a plan at the same price or cheaper is a downgrade, recorded as the
//! pending plan and applied by the renewal at the period end. **Cancel** is recorded likewise and ends
//! the subscription at the period end (the org's keys go back to their own tiers; the period's
//! unused grant expires with its ledger block).

use chrono::{DateTime, Duration, Months, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::saga::{self, NewSaga};
use super::subscription::{self, Op, SubscriptionData};
use super::Settings;
use crate::http::{FieldError, Problem, ProblemKind};
use crate::tenancy::{orgs, tiers};
use crate::{audit, outbox};

/// A plan: what a subscription pays per month and what it gets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Plan {
    pub name: String,
    /// The tier the org's keys get while subscribed.
    pub tier: String,
    /// Tokens granted per period, expiring at its end.
    pub monthly_tokens: i64,
    pub price_cents: i64,
    pub currency: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// `PUT /v1/plans/{name}` body.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanBody {
    pub tier: String,
    pub monthly_tokens: i64,
    pub price_cents: i64,
    /// Default: billing's currency.
    pub currency: Option<String>,
}

const PLAN_COLUMNS: &str =
    "name, tier, monthly_tokens, price_cents, currency, created_at, updated_at";

fn internal(e: impl std::fmt::Display) -> Problem {
    Problem::new(ProblemKind::Internal, e.to_string())
}

/// Validates a plan; a tier must exist in tenancy.
async fn check_plan(pool: &PgPool, name: &str, body: &PlanBody) -> Result<(), Problem> {
    let mut errors = Vec::new();
    if let Err(e) = tiers::check_tier_name("name", name) {
        errors.push(e);
    }
    if !(1..=1_000_000_000_000).contains(&body.monthly_tokens) {
        errors.push(FieldError::new("monthly_tokens", "must be 1..=10^12"));
    }
    if !(1..=100_000_000).contains(&body.price_cents) {
        errors.push(FieldError::new("price_cents", "must be 1..=10^8"));
    }
    let currency_ok = |c: &str| c.len() == 3 && c.bytes().all(|b| b.is_ascii_lowercase());
    if body.currency.as_deref().is_some_and(|c| !currency_ok(c)) {
        errors.push(FieldError::new("currency", "must be 3 lowercase letters"));
    }
    if tiers::get(pool, &body.tier).await.is_err() {
        errors.push(FieldError::new("tier", "no such tier"));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Problem::invalid(errors))
    }
}

/// Creates or replaces plan `name` (audited); the bool is true when it was created.
pub async fn put_plan(
    pool: &PgPool,
    now: DateTime<Utc>,
    actor: &str,
    name: &str,
    body: &PlanBody,
    settings: &Settings,
) -> Result<(Plan, bool), Problem> {
    check_plan(pool, name, body).await?;
    let currency = body.currency.clone().unwrap_or(settings.currency.clone());
    let mut tx = crate::db::begin(pool).await?;
    let sql = format!(
        "INSERT INTO billing.plans AS p ({PLAN_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $6)
         ON CONFLICT (name) DO UPDATE SET tier = $2, monthly_tokens = $3, price_cents = $4,
             currency = $5, updated_at = $6
         RETURNING {PLAN_COLUMNS}, (xmax = 0) AS created"
    );
    let row: (
        String,
        String,
        i64,
        i64,
        String,
        DateTime<Utc>,
        DateTime<Utc>,
        bool,
    ) = sqlx::query_as(&sql)
        .bind(name)
        .bind(&body.tier)
        .bind(body.monthly_tokens)
        .bind(body.price_cents)
        .bind(&currency)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
    let (name, tier, monthly_tokens, price_cents, currency, created_at, updated_at, created) = row;
    let plan = Plan {
        name,
        tier,
        monthly_tokens,
        price_cents,
        currency,
        created_at,
        updated_at,
    };
    let change = audit::Change {
        actor,
        action: "plan.put",
        object_kind: "plan",
        object_id: plan.name.clone(),
        detail: serde_json::to_value(&plan).map_err(internal)?,
    };
    audit::with_event(&mut tx, super::purchase::TOPIC, "plan", "plan.put", change).await?;
    tx.commit().await?;
    Ok((plan, created))
}

/// Plan `name`.
pub async fn plan(conn: &mut PgConnection, name: &str) -> Result<Option<Plan>, sqlx::Error> {
    let sql = format!("SELECT {PLAN_COLUMNS} FROM billing.plans WHERE name = $1");
    sqlx::query_as(&sql).bind(name).fetch_optional(conn).await
}

/// Every plan, by name.
pub async fn plans(pool: &PgPool) -> Result<Vec<Plan>, sqlx::Error> {
    let sql = format!("SELECT {PLAN_COLUMNS} FROM billing.plans ORDER BY name");
    sqlx::query_as(&sql).fetch_all(pool).await
}

/// The prorated upgrade for `remaining` of a `period` (both in whole seconds): the price difference
/// rounded **up** to the cent, the token difference rounded **down** (never a negative token grant).
/// Exact integer arithmetic (i128), no floats.
pub fn prorate(diff_cents: i64, diff_tokens: i64, remaining: i64, period: i64) -> (i64, i64) {
    if period <= 0 || remaining <= 0 {
        return (0, 0);
    }
    let (r, p) = (i128::from(remaining.min(period)), i128::from(period));
    let cents = (i128::from(diff_cents) * r + p - 1) / p;
    let tokens = i128::from(diff_tokens.max(0)) * r / p;
    (
        i64::try_from(cents).unwrap_or(i64::MAX),
        i64::try_from(tokens).unwrap_or(i64::MAX),
    )
}

/// The end of a monthly period starting at `start` (calendar months; clamped at month ends).
pub fn period_end(start: DateTime<Utc>) -> DateTime<Utc> {
    start
        .checked_add_months(Months::new(1))
        .unwrap_or(start + Duration::days(30))
}

/// A subscription as the API shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Subscription {
    pub id: Uuid,
    #[sqlx(rename = "org_id")]
    pub org: Uuid,
    /// `pending`, `incomplete` (the first payment failed), `active`, `past_due` or `canceled`.
    pub state: String,
    pub plan: String,
    /// A downgrade applied at the period end.
    pub pending_plan: Option<String>,
    pub cancel_at_period_end: bool,
    /// The current period's number (1 = the first; 0 before the first is paid).
    pub period: i32,
    pub current_period_start: Option<DateTime<Utc>>,
    pub current_period_end: Option<DateTime<Utc>>,
    /// The saga in flight (subscribe, upgrade or renewal), if any.
    pub saga: Option<Uuid>,
    pub renewal_failures: i32,
    #[sqlx(skip)]
    pub history: Vec<HistoryEntry>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One event of a subscription's history.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct HistoryEntry {
    pub seq: i64,
    /// `subscribed`, `activated`, `subscribe_failed`, `upgrade_started`, `upgraded`, `upgrade_failed`,
    /// `downgrade_scheduled`, `cancel_scheduled`, `renewal_started`, `renewed`, `past_due`, `canceled`,
    /// `needs_attention`.
    pub event: String,
    pub detail: Value,
    pub at: DateTime<Utc>,
}

const SUB_COLUMNS: &str = "id, org_id, state, plan, pending_plan, cancel_at_period_end, period,
    period_start AS current_period_start, period_end AS current_period_end, saga_id AS saga,
    renewal_failures, created_at, updated_at";

/// The org's subscription: the live one, else the latest.
pub async fn current(pool: &PgPool, org: Uuid) -> Result<Subscription, Problem> {
    let sql = format!(
        "SELECT {SUB_COLUMNS} FROM billing.subscriptions WHERE org_id = $1
         ORDER BY (state IN ('pending', 'active', 'past_due')) DESC, created_at DESC LIMIT 1"
    );
    let found: Option<Subscription> = sqlx::query_as(&sql).bind(org).fetch_optional(pool).await?;
    let mut sub = found.ok_or_else(|| {
        Problem::new(
            ProblemKind::NotFound,
            format!("org {org} has no subscription"),
        )
    })?;
    sub.history = sqlx::query_as(
        "SELECT seq, event, detail, at FROM billing.subscription_history WHERE subscription_id = $1 ORDER BY seq",
    )
    .bind(sub.id)
    .fetch_all(pool)
    .await?;
    Ok(sub)
}

/// A subscribe request.
#[derive(Debug, Clone)]
pub struct NewSubscription<'a> {
    pub org: Uuid,
    pub plan: &'a str,
    pub idempotency_key: &'a str,
    pub actor: &'a str,
}

fn check_key(key: &str) -> Result<(), Problem> {
    if key.is_empty() || key.len() > 255 || !key.chars().all(|c| c.is_ascii_graphic()) {
        return Err(Problem::field(
            "Idempotency-Key",
            "required: 1 to 255 visible ASCII characters",
        ));
    }
    Ok(())
}

async fn plan_or_422(conn: &mut PgConnection, name: &str) -> Result<Plan, Problem> {
    plan(conn, name)
        .await?
        .ok_or_else(|| Problem::field("plan", "no such plan"))
}

/// The saga's data for charging `plan` for period `n` of `[start, end)`.
fn saga_data(
    sub: Uuid,
    org: Uuid,
    op: Op,
    plan: &Plan,
    period: (i32, DateTime<Utc>, DateTime<Utc>),
) -> SubscriptionData {
    let (n, start, end) = period;
    SubscriptionData {
        op,
        subscription_id: sub,
        org_id: org,
        plan: plan.name.clone(),
        tier: plan.tier.clone(),
        prev_tier: None,
        tokens: plan.monthly_tokens,
        amount_cents: plan.price_cents,
        currency: plan.currency.clone(),
        period: n,
        period_start: start,
        period_end: end,
        grant_ref: subscription::grant_ref(sub, n),
        max_renewal_failures: 0,
        retry_after_secs: 0,
        payment_intent: None,
        compensations: Vec::new(),
    }
}

/// Inserts saga `id` for `data` on `tx` and marks it the subscription's saga in flight.
async fn start_saga(
    tx: &mut PgConnection,
    id: Uuid,
    data: &SubscriptionData,
    now: DateTime<Utc>,
    settings: &Settings,
) -> Result<Uuid, Problem> {
    let new = NewSaga {
        id,
        kind: subscription::KIND,
        org_id: data.org_id,
        first_step: subscription::FORWARD[0],
        data: serde_json::to_value(data).map_err(internal)?,
    };
    saga::insert(&mut *tx, &new, now, now + settings.saga_deadline).await?;
    sqlx::query("UPDATE billing.subscriptions SET saga_id = $2, updated_at = $3 WHERE id = $1")
        .bind(data.subscription_id)
        .bind(id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    Ok(id)
}

/// Subscribes the org to a plan: the subscription (`pending`) and its subscribe saga, or the one
/// `(org, key)` already made. The bool is true when created now.
pub async fn subscribe(
    pool: &PgPool,
    now: DateTime<Utc>,
    settings: &Settings,
    req: &NewSubscription<'_>,
) -> Result<(Subscription, bool), Problem> {
    check_key(req.idempotency_key)?;
    orgs::get(pool, req.org).await?;
    let hash = hex::encode(Sha256::digest(json!({ "plan": req.plan }).to_string()));
    let mut tx = crate::db::begin(pool).await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('subscription:' || $1))")
        .bind(req.org.to_string())
        .execute(&mut *tx)
        .await?;
    let existing: Option<String> = sqlx::query_scalar(
        "SELECT request_hash FROM billing.subscriptions WHERE org_id = $1 AND idempotency_key = $2",
    )
    .bind(req.org)
    .bind(req.idempotency_key)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(seen) = existing {
        drop(tx);
        if seen != hash {
            let detail = "Idempotency-Key was used for a different subscription request";
            return Err(Problem::new(ProblemKind::Conflict, detail));
        }
        return Ok((current(pool, req.org).await?, false));
    }
    let plan = plan_or_422(&mut tx, req.plan).await?;
    let live: Option<Uuid> = sqlx::query_scalar(
        "SELECT id FROM billing.subscriptions WHERE org_id = $1 AND state IN ('pending', 'active', 'past_due')",
    )
    .bind(req.org)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(id) = live {
        let detail = format!("org {} already has subscription {id}; PATCH it", req.org);
        return Err(Problem::new(ProblemKind::Conflict, detail));
    }
    let id = Uuid::new_v4();
    insert_subscription(&mut tx, id, req, &plan, &hash, now).await?;
    // Whole seconds: the ledger compares a retried grant's expiry exactly, and proration counts seconds.
    let start = now.trunc_subsecs(0);
    let data = saga_data(
        id,
        req.org,
        Op::Subscribe,
        &plan,
        (1, start, period_end(start)),
    );
    start_saga(&mut tx, Uuid::new_v4(), &data, now, settings).await?;
    tx.commit().await?;
    Ok((current(pool, req.org).await?, true))
}

async fn insert_subscription(
    tx: &mut PgConnection,
    id: Uuid,
    req: &NewSubscription<'_>,
    plan: &Plan,
    hash: &str,
    now: DateTime<Utc>,
) -> Result<(), Problem> {
    sqlx::query(
        "INSERT INTO billing.subscriptions (id, org_id, state, plan, idempotency_key, request_hash, created_at, updated_at)
         VALUES ($1, $2, 'pending', $3, $4, $5, $6, $6)",
    )
    .bind(id)
    .bind(req.org)
    .bind(&plan.name)
    .bind(req.idempotency_key)
    .bind(hash)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    let detail =
        json!({ "org": req.org, "plan": plan.name, "idempotency_key": req.idempotency_key });
    subscription::history(&mut *tx, id, "subscribed", detail.clone(), now).await?;
    let change = audit::Change {
        actor: req.actor,
        action: "subscription.create",
        object_kind: "subscription",
        object_id: id.to_string(),
        detail,
    };
    audit::with_event(
        &mut *tx,
        super::purchase::TOPIC,
        "subscription",
        "subscription.created",
        change,
    )
    .await?;
    Ok(())
}

/// The live subscription row, locked for a change.
#[derive(Debug, sqlx::FromRow)]
struct Live {
    id: Uuid,
    state: String,
    plan: String,
    period: i32,
    period_start: Option<DateTime<Utc>>,
    period_end: Option<DateTime<Utc>>,
    saga_id: Option<Uuid>,
}

async fn lock_live(tx: &mut PgConnection, org: Uuid) -> Result<Live, Problem> {
    let live: Option<Live> = sqlx::query_as(
        "SELECT id, state, plan, period, period_start, period_end, saga_id FROM billing.subscriptions
         WHERE org_id = $1 AND state IN ('pending', 'active', 'past_due') FOR UPDATE",
    )
    .bind(org)
    .fetch_optional(&mut *tx)
    .await?;
    let live = live.ok_or_else(|| {
        Problem::new(
            ProblemKind::NotFound,
            format!("org {org} has no live subscription"),
        )
    })?;
    if live.saga_id.is_some() || live.state != "active" {
        let detail = format!(
            "subscription {} is {} with a saga in flight or unpaid; retry later",
            live.id, live.state
        );
        return Err(Problem::new(ProblemKind::Conflict, detail));
    }
    Ok(live)
}

/// Writes the history row, the audit event and the outbox event of an API change on `tx`.
async fn changed(
    tx: &mut PgConnection,
    (org, id): (Uuid, Uuid),
    actor: &str,
    event: &str,
    detail: Value,
    now: DateTime<Utc>,
) -> Result<(), Problem> {
    subscription::history(&mut *tx, id, event, detail.clone(), now).await?;
    let change = audit::Change {
        actor,
        action: "subscription.update",
        object_kind: "subscription",
        object_id: id.to_string(),
        detail: json!({ "event": event, "detail": detail.clone() }),
    };
    audit::record(&mut *tx, change).await?;
    let mut data = detail;
    data["change"] = json!(event);
    outbox::append(
        &mut *tx,
        subscription::event(id, org, "subscription.changed", data),
    )
    .await?;
    Ok(())
}

/// Changes the org's plan: dearer → an upgrade saga now (returns true: a saga runs); otherwise the
/// downgrade is pending until the period end.
pub async fn change_plan(
    pool: &PgPool,
    now: DateTime<Utc>,
    settings: &Settings,
    (org, plan, actor): (Uuid, &str, &str),
) -> Result<(Subscription, bool), Problem> {
    let mut tx = crate::db::begin(pool).await?;
    let target = plan_or_422(&mut tx, plan).await?;
    let live = lock_live(&mut tx, org).await?;
    let from = plan_or_422(&mut tx, &live.plan).await?;
    if target.name == from.name {
        return Err(Problem::field("plan", "is already the subscription's plan"));
    }
    let upgrade = target.price_cents > from.price_cents;
    if upgrade {
        upgrade_saga(&mut tx, now, settings, &live, (&from, &target)).await?;
    } else {
        sqlx::query(
            "UPDATE billing.subscriptions SET pending_plan = $2, updated_at = $3 WHERE id = $1",
        )
        .bind(live.id)
        .bind(&target.name)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    let event = if upgrade {
        "upgrade_started"
    } else {
        "downgrade_scheduled"
    };
    let detail = json!({ "from": from.name, "to": target.name, "at_period_end": live.period_end });
    changed(&mut tx, (org, live.id), actor, event, detail, now).await?;
    tx.commit().await?;
    Ok((current(pool, org).await?, upgrade))
}

async fn upgrade_saga(
    tx: &mut PgConnection,
    now: DateTime<Utc>,
    settings: &Settings,
    live: &Live,
    (from, to): (&Plan, &Plan),
) -> Result<(), Problem> {
    let (Some(start), Some(end)) = (live.period_start, live.period_end) else {
        return Err(Problem::new(
            ProblemKind::Conflict,
            "the subscription has no paid period yet",
        ));
    };
    let remaining = (end - now).num_seconds();
    let (cents, tokens) = prorate(
        to.price_cents - from.price_cents,
        to.monthly_tokens - from.monthly_tokens,
        remaining,
        (end - start).num_seconds(),
    );
    if cents <= 0 {
        let detail = "the period ends now; change the plan after its renewal";
        return Err(Problem::new(ProblemKind::Conflict, detail));
    }
    let org = sqlx::query_scalar("SELECT org_id FROM billing.subscriptions WHERE id = $1")
        .bind(live.id)
        .fetch_one(&mut *tx)
        .await?;
    let mut data = saga_data(live.id, org, Op::Upgrade, to, (live.period, start, end));
    data.prev_tier = Some(from.tier.clone());
    data.amount_cents = cents;
    data.tokens = tokens;
    // Per saga: an upgrade that failed (its grant reversed) and is tried again grants anew.
    let saga = Uuid::new_v4();
    data.grant_ref = format!("{}:upgrade:{saga}", data.grant_ref);
    start_saga(tx, saga, &data, now, settings).await?;
    Ok(())
}

/// Cancels the org's subscription at the period end.
pub async fn cancel(
    pool: &PgPool,
    now: DateTime<Utc>,
    org: Uuid,
    actor: &str,
) -> Result<Subscription, Problem> {
    let mut tx = crate::db::begin(pool).await?;
    let live = lock_live(&mut tx, org).await?;
    sqlx::query("UPDATE billing.subscriptions SET cancel_at_period_end = true, updated_at = $2 WHERE id = $1")
        .bind(live.id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    let detail = json!({ "plan": live.plan, "at_period_end": live.period_end });
    changed(
        &mut tx,
        (org, live.id),
        actor,
        "cancel_scheduled",
        detail,
        now,
    )
    .await?;
    tx.commit().await?;
    current(pool, org).await
}

/// How renewals retry a declined payment.
#[derive(Debug, Clone)]
pub struct RenewalPolicy {
    /// Declined renewals before the subscription is canceled.
    pub max_failures: i32,
    /// The wait between tries.
    pub retry_after: Duration,
    /// Subscriptions claimed per round.
    pub batch: i64,
}

impl Default for RenewalPolicy {
    fn default() -> Self {
        Self {
            max_failures: 3,
            retry_after: Duration::days(1),
            batch: 32,
        }
    }
}

/// A subscription due for renewal.
#[derive(Debug, sqlx::FromRow)]
struct Due {
    id: Uuid,
    org_id: Uuid,
    plan: String,
    pending_plan: Option<String>,
    cancel_at_period_end: bool,
    period: i32,
    period_end: Option<DateTime<Utc>>,
    renewal_failures: i32,
}

/// The renewal job's round: claims the subscriptions whose period ended (`FOR UPDATE SKIP LOCKED`, so
/// replicas split them and none is claimed twice) and, in the claim's transaction, either ends it (a
/// pending cancel) or starts its renewal saga (which the saga engine runs). Returns how many it handled.
pub async fn renew_due(
    pool: &PgPool,
    now: DateTime<Utc>,
    settings: &Settings,
    policy: &RenewalPolicy,
) -> Result<usize, Problem> {
    let mut tx = crate::db::begin(pool).await?;
    let due: Vec<Due> = sqlx::query_as(
        "SELECT id, org_id, plan, pending_plan, cancel_at_period_end, period, period_end, renewal_failures
         FROM billing.subscriptions
         WHERE state IN ('active', 'past_due') AND saga_id IS NULL AND next_renewal_at <= $1
         ORDER BY next_renewal_at LIMIT $2 FOR UPDATE SKIP LOCKED",
    )
    .bind(now)
    .bind(policy.batch)
    .fetch_all(&mut *tx)
    .await?;
    for d in &due {
        if d.cancel_at_period_end {
            end_subscription(&mut tx, d, now).await?;
            continue;
        }
        let plan = plan_or_422(&mut tx, d.pending_plan.as_deref().unwrap_or(&d.plan)).await?;
        let start = d.period_end.unwrap_or(now);
        let mut data = saga_data(
            d.id,
            d.org_id,
            Op::Renew,
            &plan,
            (d.period + 1, start, period_end(start)),
        );
        if d.renewal_failures > 0 {
            // A retry after a failed renewal: that saga's grant (if any) was reversed under the
            // period's ref, so this one grants under its own.
            data.grant_ref = format!("{}:retry:{}", data.grant_ref, d.renewal_failures);
        }
        data.max_renewal_failures = policy.max_failures;
        data.retry_after_secs = policy.retry_after.num_seconds();
        let saga = start_saga(&mut tx, Uuid::new_v4(), &data, now, settings).await?;
        let detail = json!({ "saga": saga, "plan": plan.name, "period": d.period + 1 });
        subscription::history(&mut tx, d.id, "renewal_started", detail, now).await?;
    }
    tx.commit().await?;
    Ok(due.len())
}

/// A pending cancel at the period end: `canceled`, the org's keys back on their own tiers.
async fn end_subscription(
    tx: &mut PgConnection,
    d: &Due,
    now: DateTime<Utc>,
) -> Result<(), Problem> {
    sqlx::query(
        "UPDATE billing.subscriptions SET state = 'canceled', updated_at = $2 WHERE id = $1",
    )
    .bind(d.id)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    orgs::set_plan_tier(&mut *tx, d.org_id, None).await?;
    let detail = json!({ "plan": d.plan, "period": d.period, "reason": "canceled at period end" });
    subscription::history(&mut *tx, d.id, "canceled", detail.clone(), now).await?;
    let event = subscription::event(d.id, d.org_id, "subscription.canceled", detail);
    outbox::append(&mut *tx, event).await?;
    Ok(())
}

/// The renewal job: a round every `every` until `shutdown` resolves.
pub async fn renew_every(
    pool: PgPool,
    clock: std::sync::Arc<dyn crate::clock::Clock>,
    settings: Settings,
    every: std::time::Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let policy = RenewalPolicy::default();
    tokio::pin!(shutdown);
    loop {
        if let Err(e) = renew_due(&pool, clock.now(), &settings, &policy).await {
            tracing::warn!(error = ?e, "subscription renewal round failed; retrying next round");
        }
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prorating_rounds_the_charge_up_and_the_tokens_down() {
        // Half of a 30-day period left: exactly half.
        assert_eq!(
            prorate(1000, 1_000_000, 1_296_000, 2_592_000),
            (500, 500_000)
        );
        // One second left of 30 days: a cent, no token.
        assert_eq!(prorate(1000, 1_000_000, 1, 2_592_000), (1, 0));
        // A third: 333.33… cents → 334; 333 333.33… tokens → 333 333.
        assert_eq!(prorate(1000, 1_000_000, 1, 3), (334, 333_333));
        // Fewer tokens on the dearer plan: nothing granted.
        assert_eq!(prorate(1000, -5, 1, 2), (500, 0));
        assert_eq!(prorate(1000, 5, 0, 2), (0, 0));
    }

    #[test]
    fn periods_are_calendar_months() {
        let start =
            DateTime::parse_from_rfc3339("2026-01-31T00:00:00Z").map(|t| t.with_timezone(&Utc));
        let end = start.map(period_end).map(|t| t.to_rfc3339());
        assert_eq!(end.ok().as_deref(), Some("2026-02-28T00:00:00+00:00"));
    }
}
