//! What makes notifications: the domain events of billing (`leaky.billing.v1`) and the ledger
//! (`leaky.ledger.v1`), consumed through the idempotent kit, and the jobs of [`super::expiring`].
//! [`enqueue`] turns one notification into one `notify.deliveries` row per subscribed webhook endpoint
//! and, for the kinds admins read by email, per recipient; its unique key makes a repeated event
//! id a no-op.

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use futures::FutureExt;
use leaky_wire::event::Envelope;
use rdkafka::error::KafkaError;
use serde_json::{json, Value};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{settings, thresholds};
use crate::consume::{Consumer, ConsumerConfig, Handler, HandlerError};
use crate::{billing, ledger, tenancy};

/// The consumer group (and processed-events name) of the notification consumers.
pub const GROUP: &str = "leaky-notify";
/// The tenancy role whose users receive an org's email notifications.
pub const ADMIN_ROLE: &str = "org-admin";

/// One thing to tell an org.
#[derive(Debug, Clone)]
pub struct Notification {
    /// Unique per notification: the domain event's id, or a key naming the occurrence (e.g.
    /// `credits.expiring:<block id>`); a second enqueue with it adds nothing.
    pub event_id: String,
    pub org: Uuid,
    /// The event type, e.g. `purchase.completed`.
    pub kind: String,
    pub time: DateTime<Utc>,
    pub data: Value,
    /// Whether the org's admins also get it by email.
    pub email: bool,
}

impl Notification {
    /// The webhook body: `{id, type, time, org, data}`.
    pub fn body(&self) -> Value {
        json!({"id": self.event_id, "type": self.kind, "time": self.time, "org": self.org, "data": self.data})
    }
}

/// The email recipients of `org`: its users with role [`ADMIN_ROLE`] (tenancy's Rust API).
pub async fn recipients(pool: &PgPool, org: Uuid) -> Result<Vec<String>, sqlx::Error> {
    let users = match tenancy::users::list(pool, org, 1000, None).await {
        Ok(users) => users,
        Err(tenancy::TenancyError::Db(e)) => return Err(e),
        // A deleted org has nobody to tell.
        Err(_) => return Ok(Vec::new()),
    };
    Ok(users
        .into_iter()
        .filter(|u| u.roles.iter().any(|r| r == ADMIN_ROLE))
        .map(|u| u.email)
        .collect())
}

/// Writes `n`'s deliveries on `tx` (webhooks: enabled endpoints subscribed to its kind; email: the
/// `recipients`, when `n.email`); returns how many rows were new.
pub async fn enqueue(
    tx: &mut PgConnection,
    n: &Notification,
    recipients: &[String],
) -> Result<u64, sqlx::Error> {
    let body = n.body();
    let hooks = sqlx::query(
        "INSERT INTO notify.deliveries (id, event_id, channel, target, org_id, type, body, status, next_attempt_at, created_at)
         SELECT gen_random_uuid(), $1, 'webhook', e.id::text, $2, $3, $4, 'pending', $5, $5
         FROM notify.endpoints e
         WHERE e.org_id = $2 AND e.enabled AND ($3 = ANY(e.events) OR '*' = ANY(e.events))
         ON CONFLICT DO NOTHING",
    )
    .bind(&n.event_id)
    .bind(n.org)
    .bind(&n.kind)
    .bind(&body)
    .bind(n.time)
    .execute(&mut *tx)
    .await?;
    let mut added = hooks.rows_affected();
    if n.email && !recipients.is_empty() {
        let mails = sqlx::query(
            "INSERT INTO notify.deliveries (id, event_id, channel, target, org_id, type, body, status, next_attempt_at, created_at)
             SELECT gen_random_uuid(), $1, 'email', r, $2, $3, $4, 'pending', $5, $5 FROM unnest($6::text[]) r
             ON CONFLICT DO NOTHING",
        )
        .bind(&n.event_id)
        .bind(n.org)
        .bind(&n.kind)
        .bind(&body)
        .bind(n.time)
        .bind(recipients)
        .execute(&mut *tx)
        .await?;
        added += mails.rows_affected();
    }
    Ok(added)
}

/// [`enqueue`] with the org's recipients looked up when `n.email`: its [`ADMIN_ROLE`] users and its
/// `notify_email` ([`super::settings`]), each once.
pub async fn enqueue_for(
    pool: &PgPool,
    tx: &mut PgConnection,
    n: &Notification,
) -> Result<u64, sqlx::Error> {
    let mut to = Vec::new();
    if n.email {
        to = recipients(pool, n.org).await?;
        if let Some(extra) = settings::notify_email(tx, n.org).await? {
            if !to.iter().any(|t| t.eq_ignore_ascii_case(&extra)) {
                to.push(extra);
            }
        }
    }
    enqueue(tx, n, &to).await
}

/// The notification consumer's [`Handler`] (one per topic; both record as [`GROUP`]).
#[derive(Debug, Clone)]
pub struct NotifyHandler {
    pool: PgPool,
}

impl NotifyHandler {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

impl Handler for NotifyHandler {
    type Data = Value;

    fn name(&self) -> &str {
        GROUP
    }

    fn apply<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        event: &'a Envelope<Value>,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        async move { self.on_event(tx, event).await }.boxed()
    }
}

/// The org a domain event is about: billing puts it in `data.org`, the ledger in `data.entry.org`.
fn org_of(data: &Value) -> Option<Uuid> {
    let raw = data["org"]
        .as_str()
        .or_else(|| data["entry"]["org"].as_str())?;
    Uuid::parse_str(raw).ok()
}

impl NotifyHandler {
    async fn on_event(
        &self,
        tx: &mut PgConnection,
        event: &Envelope<Value>,
    ) -> Result<(), HandlerError> {
        let purchase = event.kind.starts_with("purchase.");
        let ledger = event.kind.starts_with("ledger.");
        if !purchase && !ledger {
            return Ok(());
        }
        let org = org_of(&event.data)
            .ok_or_else(|| HandlerError::Reject(format!("{} without an org", event.kind)))?;
        let time = DateTime::parse_from_rfc3339(&event.time)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(|_| Utc::now());
        let n = Notification {
            event_id: event.id.clone(),
            org,
            kind: event.kind.clone(),
            time,
            data: event.data.clone(),
            // Admins read purchases by email; raw ledger entries (one per request) only go to webhooks.
            email: purchase,
        };
        enqueue_for(&self.pool, tx, &n).await?;
        if ledger {
            thresholds::on_balance(&self.pool, tx, org, &event.data["balance"], time).await?;
        }
        Ok(())
    }
}

/// The notification consumers: one on billing's topic (consumer group `<group>.billing`), one on
/// the ledger's (`<group>.ledger`) — separate groups, so one topic's rebalance never pauses the other.
pub fn consumers(
    pool: PgPool,
    brokers: &str,
    topics: [&str; 2],
    group: &str,
) -> Result<[Consumer<NotifyHandler>; 2], KafkaError> {
    let make = |topic: &str, part: &str| {
        Consumer::new(
            pool.clone(),
            ConsumerConfig::new(brokers, &format!("{group}.{part}"), topic),
            NotifyHandler::new(pool.clone()),
        )
    };
    Ok([make(topics[0], "billing")?, make(topics[1], "ledger")?])
}

/// Runs the control plane's notification consumers until the task is dropped.
pub async fn run(pool: PgPool, brokers: String) {
    let topics = [billing::purchase::TOPIC, ledger::LEDGER_TOPIC];
    match consumers(pool, &brokers, topics, GROUP) {
        Ok([a, b]) => {
            tokio::join!(a.run(), b.run());
        }
        Err(e) => {
            tracing::error!(error = %e, "notify: no Kafka consumer, domain events not notified")
        }
    }
}
