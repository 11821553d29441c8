//! The statement closer: a periodic job in the analytics role that closes each org's daily and
//! monthly statements once the period is over plus a grace (`--close-after`), stores the bytes and
//! the frozen lines once (`IF NOT EXISTS`: two replicas closing the same period agree on one
//! statement), records the adjustments the statement carries, and publishes `report.generated`.
//!
//! The event is published at least once: a statement is marked `emitted` only after the broker
//! acknowledged it, and every tick re-publishes statements of its periods that are not marked. Its
//! id is derived from the org and the period, so a consumer dedupes the repeats.
//!
//! Time comes from an injected clock, so tests close periods deterministically with
//! [`Closer::tick`].

use std::sync::Arc;
use std::time::Duration;

use chrono::SecondsFormat;
use chrono_tz::Tz;
use leaky_wire::event::{Envelope, NO_ORG_KEY, SPEC_VERSION};
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};

use crate::buckets::DAY_MS;
use crate::metrics::Metrics;
use crate::reports::db::{self, Stored};
use crate::reports::period::{Kind, Period};
use crate::reports::statement;
use crate::reports::ZONE_SHIFT_MS;
use crate::store::{Store, StoreError};

/// The topic of `report.generated`, keyed by org.
pub const REPORTS_TOPIC: &str = "leaky.reports.v1";
/// The CloudEvents `type`.
pub const REPORT_TYPE: &str = "report.generated";
/// The CloudEvents `source`.
pub const SOURCE: &str = "/leaky-tokens/analytics";

/// The wall clock in milliseconds since the epoch (tests inject their own).
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The real clock.
pub fn system_clock() -> Clock {
    Arc::new(|| chrono::Utc::now().timestamp_millis())
}

/// How the closer runs.
#[derive(Debug, Clone)]
pub struct CloserConfig {
    pub brokers: String,
    pub topic: String,
    /// How often a tick runs (`--statements-every`).
    pub every: Duration,
    /// How long after its end a period is closed (`--close-after`): late events within the grace
    /// land in the statement rather than in an adjustment.
    pub close_after: Duration,
    /// The zone of an org whose own zone analytics has not learnt (`--statements-tz`; each org's
    /// zone comes from the control plane's tenancy events, see [`crate::zones`]).
    pub tz: Tz,
    /// Periods of each kind a tick looks at, newest closable back (catch-up after downtime).
    pub catch_up: u32,
}

impl CloserConfig {
    pub fn new(brokers: &str) -> CloserConfig {
        CloserConfig {
            brokers: brokers.to_owned(),
            topic: REPORTS_TOPIC.to_owned(),
            every: Duration::from_secs(300),
            close_after: Duration::from_secs(3600),
            tz: Tz::UTC,
            catch_up: 3,
        }
    }
}

/// The job; see the module docs.
pub struct Closer {
    store: Arc<Store>,
    metrics: Metrics,
    producer: FutureProducer,
    config: CloserConfig,
    /// Written into `closed_by`: tells this closer whether it won a race.
    owner: String,
    clock: Clock,
}

impl Closer {
    pub fn new(
        config: CloserConfig,
        store: Arc<Store>,
        metrics: Metrics,
        clock: Clock,
    ) -> Result<Closer, KafkaError> {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &config.brokers)
            .set("enable.idempotence", "true")
            .create()?;
        let owner = format!(
            "{}-{}",
            std::process::id(),
            chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
        );
        Ok(Closer {
            store,
            metrics,
            producer,
            config,
            owner,
            clock,
        })
    }

    /// Ticks every `every` until the task is dropped.
    pub async fn run(self) {
        loop {
            let now = (self.clock)();
            if let Err(e) = self.tick(now).await {
                tracing::warn!(error = %e, "statement tick failed; retried next tick");
            }
            tokio::time::sleep(self.config.every).await;
        }
    }

    /// The periods of `kind` in `tz` a tick at `now` closes, oldest first.
    pub fn due(&self, kind: Kind, now: i64, tz: Tz) -> Vec<Period> {
        let latest = Period::containing(kind, tz, self.closable_before(now)).prev();
        let mut out = vec![latest];
        for _ in 1..self.config.catch_up.max(1) {
            if let Some(p) = out.last().map(Period::prev) {
                out.push(p);
            }
        }
        out.reverse();
        out
    }

    /// Periods that ended before this instant may close.
    fn closable_before(&self, now: i64) -> i64 {
        let grace = i64::try_from(self.config.close_after.as_millis()).unwrap_or(i64::MAX);
        now.saturating_sub(grace)
    }

    /// The UTC range whose active days a tick reads: every due period in any zone lies in it
    /// (zones' offsets differ by less than [`ZONE_SHIFT_MS`], so another zone's due periods start
    /// at most one period earlier than the fallback zone's, and all end before the grace).
    fn scan_range(&self, now: i64) -> (i64, i64) {
        let start = [Kind::Day, Kind::Month]
            .into_iter()
            .filter_map(|k| self.due(k, now, self.config.tz).first().map(Period::prev))
            .map(|p| p.start - ZONE_SHIFT_MS)
            .min()
            .unwrap_or(now);
        (start, self.closable_before(now))
    }

    /// Closes every due period of every org active in it, each in the org's own zone (the
    /// fallback zone for an org whose zone is unknown); returns the statements handled.
    pub async fn tick(&self, now: i64) -> Result<Vec<Stored>, StoreError> {
        let (from, to) = self.scan_range(now);
        let mut handled = Vec::new();
        for (org, days) in db::active_days(&self.store, from, to).await? {
            if org == NO_ORG_KEY {
                continue;
            }
            let tz = crate::zones::get(&self.store, &org)
                .await?
                .unwrap_or(self.config.tz);
            for kind in [Kind::Day, Kind::Month] {
                for p in self.due(kind, now, tz) {
                    if days.iter().any(|&d| d < p.end && d + DAY_MS > p.start) {
                        handled.push(self.close(&org, &p).await?);
                    }
                }
            }
        }
        Ok(handled)
    }

    /// Closes `org`'s statement for `p` unless closed, and finishes a closed one (adjustments
    /// recorded, event published); returns the stored statement.
    pub async fn close(&self, org: &str, p: &Period) -> Result<Stored, StoreError> {
        if let Some(s) = db::get(&self.store, org, &p.label).await? {
            self.finish(org, &s).await?;
            return Ok(s);
        }
        // The stored book, not this process's cached one: two replicas close with the same prices.
        let book = crate::prices::load(&self.store).await?;
        let c = crate::reports::compose(&self.store, &book, org, p, true).await?;
        let candidate = Stored {
            period: p.label.clone(),
            kind: p.kind.as_str().to_owned(),
            tz: p.tz.name().to_owned(),
            json: statement::to_json(&c.statement),
            csv: statement::to_csv(&c.statement),
            snapshot: c.usage,
            adjustments: c.adjustments,
            event_id: event_id(org, &p.label),
            closed_by: self.owner.clone(),
            emitted: false,
        };
        db::insert(&self.store, org, &candidate).await?;
        let stored = db::get(&self.store, org, &p.label)
            .await?
            .ok_or_else(|| StoreError::Db("a stored statement is not readable".into()))?;
        if stored.closed_by == self.owner {
            self.metrics.statements_closed.inc();
            tracing::info!(org, period = %p.label, "statement closed");
        }
        self.finish(org, &stored).await?;
        Ok(stored)
    }

    /// Records the stored statement's adjustments and publishes its event, unless done already.
    async fn finish(&self, org: &str, s: &Stored) -> Result<(), StoreError> {
        if s.emitted {
            return Ok(());
        }
        db::record_carried(&self.store, org, &s.period, &s.adjustments).await?;
        match self.publish(org, s).await {
            Ok(()) => {
                db::mark_emitted(&self.store, org, &s.period).await?;
                self.metrics.reports_published.inc();
            }
            Err(e) => tracing::warn!(error = %e, org, period = %s.period,
                "report.generated not published; retried next tick"),
        }
        Ok(())
    }

    async fn publish(&self, org: &str, s: &Stored) -> Result<(), KafkaError> {
        let payload = event(org, s, (self.clock)());
        let record = FutureRecord::to(&self.config.topic)
            .key(org.as_bytes())
            .payload(payload.as_slice());
        self.producer
            .send(record, Duration::from_secs(10))
            .await
            .map(|_| ())
            .map_err(|(e, _)| e)
    }
}

/// The event id of `org`'s statement for `period`: the same for every publication.
pub fn event_id(org: &str, period: &str) -> String {
    format!("statement/{org}/{period}")
}

/// The `report.generated` envelope: the statement's identity and totals (the bytes stay on the
/// role: `GET /v1/orgs/{org}/statements?period=`).
pub fn event(org: &str, s: &Stored, now: i64) -> Vec<u8> {
    let body: Value = serde_json::from_str(&s.json).unwrap_or(Value::Null);
    let data = json!({
        "org": org,
        "period": s.period,
        "kind": s.kind,
        "tz": s.tz,
        "currency": body["currency"],
        "totals": body["totals"],
        "lines": body["lines"].as_array().map_or(0, Vec::len),
        "adjustments": body["adjustments"].as_array().map_or(0, Vec::len),
        "href": format!("/v1/orgs/{org}/statements?period={}", s.period),
    });
    let env = Envelope {
        specversion: SPEC_VERSION.to_owned(),
        id: s.event_id.clone(),
        source: SOURCE.to_owned(),
        kind: REPORT_TYPE.to_owned(),
        time: chrono::DateTime::from_timestamp_millis(now)
            .unwrap_or_default()
            .to_rfc3339_opts(SecondsFormat::Millis, true),
        subject: Some(org.to_owned()),
        datacontenttype: "application/json".to_owned(),
        schemaversion: 1,
        data,
    };
    serde_json::to_vec(&env).unwrap_or_default()
}
