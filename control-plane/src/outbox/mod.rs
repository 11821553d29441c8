//! Bounded context "outbox" (Postgres schema `outbox`): the transactional outbox of the control plane's
//! domain events. A context calls [`append`] inside the transaction of its change, so the change and its
//! event commit together or not at all; the [`relay`] publishes committed events to Kafka afterwards,
//! at least once, in order per aggregate, and marks them sent only once the broker acknowledged them.
//!
//! Tracing: [`append`] stores the `traceparent` of the span it runs in (an `outbox.append` child of
//! the request's or message's span), so the relay can continue the trace across the commit.

pub mod relay;

use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

pub use relay::{Relay, RelayConfig, RelayStats};

/// The topic of tenancy's domain events (orgs and keys).
pub const TENANCY_TOPIC: &str = "leaky.tenancy.v1";
/// The topic of config's domain events (published versions, flags).
pub const CONFIG_TOPIC: &str = "leaky.config.v1";
/// The topic of notifications' domain events (webhook endpoints, notification settings).
pub const NOTIFY_TOPIC: &str = "leaky.notify.v1";
/// The topic of the registry's domain events (instances registered, cancelled, overridden).
pub const REGISTRY_TOPIC: &str = "leaky.registry.v1";
/// The `pg_notify` channel [`append`] wakes the relays on.
pub const CHANNEL: &str = "leaky_outbox";
/// Advisory-lock class of appends to one aggregate (serializes its `aggregate_seq`).
const APPEND_LOCK: i32 = 0x0b_0001;

/// One domain event, as the context that made the change describes it.
#[derive(Debug, Clone)]
pub struct Event {
    /// E.g. `org`, `key`.
    pub aggregate_type: &'static str,
    /// The message key on Kafka: one aggregate's events stay in order on one partition.
    pub aggregate_id: String,
    /// The CloudEvents `type`, e.g. `key.created`.
    pub kind: &'static str,
    pub topic: &'static str,
    pub data: serde_json::Value,
}

impl Event {
    /// An event on `topic` about aggregate `aggregate_type`/`aggregate_id`.
    pub fn on(
        topic: &'static str,
        aggregate_type: &'static str,
        aggregate_id: impl ToString,
        kind: &'static str,
        data: serde_json::Value,
    ) -> Event {
        Event {
            aggregate_type,
            aggregate_id: aggregate_id.to_string(),
            kind,
            topic,
            data,
        }
    }

    /// A tenancy event on [`TENANCY_TOPIC`].
    pub fn tenancy(
        aggregate_type: &'static str,
        aggregate_id: Uuid,
        kind: &'static str,
        data: serde_json::Value,
    ) -> Event {
        Event::on(TENANCY_TOPIC, aggregate_type, aggregate_id, kind, data)
    }
}

/// Writes `event` on `conn`, which must be the change's own transaction, and wakes the relays at
/// commit (`pg_notify` is transactional). Returns the event id (the CloudEvents `id`).
pub async fn append(conn: &mut PgConnection, event: Event) -> Result<Uuid, sqlx::Error> {
    let id = Uuid::new_v4();
    let span = leaky_telemetry::child("outbox.append", leaky_telemetry::SpanKind::Internal);
    let traceparent = span.as_ref().map(|s| s.context().traceparent());
    // Held to commit: the next append to this aggregate sees this one's sequence number.
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2 || ':' || $3))")
        .bind(APPEND_LOCK)
        .bind(event.aggregate_type)
        .bind(&event.aggregate_id)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO outbox.events (id, aggregate_type, aggregate_id, aggregate_seq, topic, type, payload,
                                    traceparent)
         SELECT $1, $2, $3, coalesce(max(aggregate_seq), 0) + 1, $4, $5, $6, $7 FROM outbox.events
         WHERE aggregate_type = $2 AND aggregate_id = $3",
    )
    .bind(id)
    .bind(event.aggregate_type)
    .bind(&event.aggregate_id)
    .bind(event.topic)
    .bind(event.kind)
    .bind(&event.data)
    .bind(&traceparent)
    .execute(&mut *conn)
    .await?;
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(CHANNEL)
        .execute(&mut *conn)
        .await?;
    if let Some(mut s) = span {
        s.attr(leaky_telemetry::KeyValue::new(
            "messaging.destination.name",
            event.topic,
        ));
        s.attr(leaky_telemetry::KeyValue::new(
            "cloudevents.event_type",
            event.kind,
        ));
        s.attr(leaky_telemetry::KeyValue::new(
            "cloudevents.event_id",
            id.to_string(),
        ));
        s.end();
    }
    Ok(id)
}

/// The outbox lag: how long the oldest unsent event has waited (none when all are sent).
pub async fn lag(pool: &PgPool) -> Result<Option<Duration>, sqlx::Error> {
    let secs: Option<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM now() - min(created_at))::float8 FROM outbox.events WHERE sent_at IS NULL",
    )
    .fetch_one(pool)
    .await?;
    Ok(secs.map(|s| Duration::from_secs_f64(s.max(0.0))))
}

/// How many events are not sent yet.
pub async fn unsent(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM outbox.events WHERE sent_at IS NULL")
        .fetch_one(pool)
        .await
}

/// Deletes events sent more than `retention` ago; returns how many. The newest event of each
/// aggregate stays whatever its age: [`append`] numbers the next one from it, and consumers see
/// `aggregate-seq` only ever grow.
pub async fn prune(pool: &PgPool, retention: Duration) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM outbox.events e WHERE e.sent_at < now() - make_interval(secs => $1)
           AND EXISTS (SELECT 1 FROM outbox.events n WHERE n.aggregate_type = e.aggregate_type
                         AND n.aggregate_id = e.aggregate_id AND n.aggregate_seq > e.aggregate_seq)",
    )
    .bind(retention.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// The outbox's backlog: unsent events and the age of the oldest one (what the relay lags by).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Backlog {
    pub unsent: i64,
    pub oldest_age_seconds: f64,
}

/// The backlog now (one index scan of the unsent rows).
pub async fn backlog(pool: &PgPool) -> Result<Backlog, sqlx::Error> {
    let (unsent, age): (i64, Option<f64>) = sqlx::query_as(
        "SELECT count(*), extract(epoch FROM now() - min(created_at))::float8
           FROM outbox.events WHERE sent_at IS NULL",
    )
    .fetch_one(pool)
    .await?;
    Ok(Backlog {
        unsent,
        oldest_age_seconds: age.unwrap_or(0.0).max(0.0),
    })
}
