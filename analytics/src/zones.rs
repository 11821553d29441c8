//! Each org's time zone, learnt from the control plane's tenancy events (issue 16: statements are
//! "in the org's time zone"). The control plane owns the zone (`PATCH /v1/orgs/{org}`); analytics
//! keeps a copy so the statement closer can close each org's day and month at its own midnight.
//!
//! A member of its own consumer group reads `leaky.tenancy.v1` and writes `org.created` and
//! `org.updated` zones to `org_zones` (CQL migration 4) `USING TIMESTAMP` the org's `version`, the
//! counter the control plane bumps in the same compare-and-write UPDATE that changes the zone. So
//! the row converges on the newest zone whatever the delivery order, and a redelivery rewrites the
//! same cell with the same timestamp. The version rather than the event time: two changes within
//! one millisecond (the envelope's precision) still have distinct, correctly ordered versions.
//!
//! Other tenancy events (keys, users, deletions) and events from before the zone was published
//! (an `org.created` without `time_zone`) are skipped: such an org is closed in the fallback zone
//! (`--statements-tz`) until it is updated. The topic keeps 30 days, so a role deployed later than
//! that after an org was created learns its zone only from the org's next update.

use std::sync::Arc;
use std::time::Duration;

use chrono_tz::Tz;
use leaky_wire::event::Envelope;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use serde::Deserialize;

use crate::error::{db, StoreError};
use crate::store::Store;

/// The control plane's tenancy topic.
pub const TENANCY_TOPIC: &str = "leaky.tenancy.v1";

/// An org's zone as of one of its versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneChange {
    pub org: String,
    pub tz: Tz,
    /// The org's version the zone belongs to (1 on creation, +1 per update).
    pub version: i64,
}

/// The part of an org event's `data` analytics reads.
#[derive(Debug, Deserialize)]
struct OrgData {
    id: String,
    time_zone: Option<String>,
    version: Option<i64>,
}

/// What a tenancy message says about a zone: `Ok(None)` for events that carry none (other types,
/// an `org.created` from before zones were published), `Err` with a reason for a malformed one.
pub fn decode(payload: Option<&[u8]>) -> Result<Option<ZoneChange>, String> {
    let bytes = payload.ok_or("empty message")?;
    let env: Envelope<serde_json::Value> =
        serde_json::from_slice(bytes).map_err(|e| format!("not a CloudEvent: {e}"))?;
    let created = match env.kind.as_str() {
        "org.created" => true,
        "org.updated" => false,
        _ => return Ok(None),
    };
    let data: OrgData =
        serde_json::from_value(env.data).map_err(|e| format!("{} data: {e}", env.kind))?;
    let Some(name) = data.time_zone else {
        return Ok(None);
    };
    let tz: Tz = name
        .parse()
        .map_err(|_| format!("unknown time zone {name:?}"))?;
    // An org is created at version 1; an update without its version cannot be ordered.
    let version = match (data.version, created) {
        (Some(v), _) => v,
        (None, true) => 1,
        (None, false) => return Err("org.updated without a version".into()),
    };
    Ok(Some(ZoneChange {
        org: data.id,
        tz,
        version,
    }))
}

/// Stores `z` unless a newer version of the org's zone is stored (idempotent, order-independent).
pub async fn write(store: &Store, z: &ZoneChange) -> Result<(), StoreError> {
    let ks = store.keyspace();
    let q =
        format!("INSERT INTO {ks}.org_zones (org, tz, version) VALUES (?, ?, ?) USING TIMESTAMP ?");
    store
        .session()
        .query_unpaged(q, (&z.org, z.tz.name(), z.version, z.version))
        .await
        .map_err(db)?;
    Ok(())
}

/// The zone analytics knows for `org`, if any.
pub async fn get(store: &Store, org: &str) -> Result<Option<Tz>, StoreError> {
    let ks = store.keyspace();
    let q = format!("SELECT tz FROM {ks}.org_zones WHERE org = ?");
    let res = store
        .session()
        .query_unpaged(q, (org,))
        .await
        .map_err(db)?
        .into_rows_result()
        .map_err(db)?;
    let row = res.maybe_first_row::<(Option<String>,)>().map_err(db)?;
    Ok(row.and_then(|(tz,)| tz).and_then(|name| name.parse().ok()))
}

/// Where the zone consumer reads.
#[derive(Debug, Clone)]
pub struct ZoneConfig {
    pub brokers: String,
    /// Its own group (every replica's zone consumer shares it): `<usage group>.tenancy`.
    pub group: String,
    pub topic: String,
    /// The first pause after a failed write; doubles up to `retry_max`.
    pub retry_min: Duration,
    pub retry_max: Duration,
}

impl ZoneConfig {
    pub fn new(brokers: &str, usage_group: &str) -> ZoneConfig {
        ZoneConfig {
            brokers: brokers.to_owned(),
            group: format!("{usage_group}.tenancy"),
            topic: TENANCY_TOPIC.to_owned(),
            retry_min: Duration::from_millis(100),
            retry_max: Duration::from_secs(10),
        }
    }
}

/// The consumer of `leaky.tenancy.v1`; see the module docs.
pub struct ZoneConsumer {
    kafka: StreamConsumer,
    store: Arc<Store>,
    config: ZoneConfig,
}

impl ZoneConsumer {
    /// Joins `config.group` on `config.topic`, from the earliest uncommitted offset.
    pub fn new(config: ZoneConfig, store: Arc<Store>) -> Result<ZoneConsumer, KafkaError> {
        let kafka: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &config.brokers)
            .set("group.id", &config.group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()?;
        kafka.subscribe(&[&config.topic])?;
        Ok(ZoneConsumer {
            kafka,
            store,
            config,
        })
    }

    /// Consumes until the task is dropped. A message's offset is committed after its zone is
    /// stored, so a crash redelivers it (harmless: the write is idempotent).
    pub async fn run(self) {
        // Backs off on receive errors: a topic not created yet answers every poll with one.
        let mut pause = self.config.retry_min;
        loop {
            match self.kafka.recv().await {
                Ok(m) => {
                    pause = self.config.retry_min;
                    self.apply(&m).await;
                    if let Err(e) = self.kafka.commit_message(&m, CommitMode::Async) {
                        tracing::warn!(error = %e, "tenancy offset commit failed");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?pause, "tenancy receive failed");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(self.config.retry_max);
                }
            }
        }
    }

    /// Stores the message's zone, retrying until Cassandra takes it.
    async fn apply(&self, m: &BorrowedMessage<'_>) {
        let z = match decode(m.payload()) {
            Ok(Some(z)) => z,
            Ok(None) => return,
            Err(reason) => {
                tracing::warn!(%reason, partition = m.partition(), offset = m.offset(),
                    "tenancy event skipped");
                return;
            }
        };
        let mut pause = self.config.retry_min;
        while let Err(e) = write(&self.store, &z).await {
            tracing::warn!(error = %e, retry_in = ?pause, "org zone write failed, retrying");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(self.config.retry_max);
        }
        tracing::info!(org = %z.org, tz = %z.tz.name(), version = z.version, "org time zone");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, data: serde_json::Value) -> Vec<u8> {
        let v = serde_json::json!({"specversion": "1.0", "id": "e1", "source": "/cp", "type": kind,
            "time": "2026-11-30T12:00:00.000Z", "subject": "o1",
            "datacontenttype": "application/json", "schemaversion": 1, "data": data});
        serde_json::to_vec(&v).unwrap_or_default()
    }

    #[test]
    fn org_events_carry_zones_and_versions() {
        let created = event(
            "org.created",
            serde_json::json!({"id": "o1", "name": "a", "time_zone": "Asia/Kolkata"}),
        );
        let z = decode(Some(created.as_slice()));
        assert_eq!(
            z,
            Ok(Some(ZoneChange {
                org: "o1".into(),
                tz: chrono_tz::Asia::Kolkata,
                version: 1
            }))
        );
        let updated = event(
            "org.updated",
            serde_json::json!({"id": "o1", "name": "a", "time_zone": "UTC", "version": 3}),
        );
        assert_eq!(
            decode(Some(updated.as_slice())).map(|z| z.map(|z| z.version)),
            Ok(Some(3))
        );
        // Other events and zone-less ones say nothing; malformed ones are refused with a reason.
        let key = event("key.created", serde_json::json!({"id": "k1"}));
        assert_eq!(decode(Some(key.as_slice())), Ok(None));
        let old = event("org.created", serde_json::json!({"id": "o1", "name": "a"}));
        assert_eq!(decode(Some(old.as_slice())), Ok(None));
        let bad = event(
            "org.updated",
            serde_json::json!({"id": "o1", "time_zone": "Mars/Olympus", "version": 2}),
        );
        assert!(decode(Some(bad.as_slice())).is_err());
        let unversioned = event(
            "org.updated",
            serde_json::json!({"id": "o1", "time_zone": "UTC"}),
        );
        assert!(decode(Some(unversioned.as_slice())).is_err());
        assert!(decode(Some(b"{".as_slice())).is_err());
        assert!(decode(None).is_err());
    }
}
