//! Per-org statement zones on real Kafka and Cassandra, on an injected clock: the role learns each
//! org's zone from `org.created` / `org.updated` on a tenancy topic, and the closer closes each
//! org's day at its own midnight. Two orgs, one in UTC and one in Asia/Kolkata (+5:30, so its days
//! start on the half hour and must be read from minute rollups), with events a minute either side
//! of their midnights; then the Kolkata org moves to Pacific/Auckland (+13): its first Auckland day
//! starts where its last Kolkata day ended, so no event is billed twice. A stale `org.created`
//! arriving after the update, and a redelivery of every tenancy event, change nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::common::{
    cassandra, consumer_config, eventually, kafka, produce, produce_events, Ev, Role,
};
use chrono_tz::Tz;
use leaky_analytics::reports::job::{Clock, Closer, CloserConfig};
use leaky_analytics::zones::{self, ZoneChange, ZoneConfig, ZoneConsumer};
use leaky_wire::event::Envelope;
use serde_json::{json, Value};

const UTC_ORG: &str = "org-utc";
const IST_ORG: &str = "org-ist";

fn ms(s: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .unwrap_or(i64::MIN)
}

/// One usage event of `org` at `at` with `prompt` prompt tokens (distinct powers of ten, so a
/// statement's prompt total names exactly the events it holds).
fn ev(id: &str, org: &str, at: &str, prompt: u64) -> Ev {
    Ev {
        id: id.into(),
        org: org.into(),
        key: "k1".into(),
        model: "gpt-4o-mini".into(),
        provider: "openai".into(),
        ts: ms(at),
        prompt,
        completion: 1,
        status: 200,
    }
}

fn usage() -> Vec<Ev> {
    vec![
        // Kolkata midnight of 10 October is 2026-10-09T18:30Z, of 11 October 2026-10-10T18:30Z.
        ev("a", IST_ORG, "2026-10-09T18:29:00Z", 1),
        ev("b", IST_ORG, "2026-10-09T18:31:00Z", 10),
        ev("c", IST_ORG, "2026-10-10T18:29:00Z", 100),
        ev("d", IST_ORG, "2026-10-10T18:31:00Z", 1_000),
        // Auckland (+13 in October) midnight of 12 October is 2026-10-11T11:00Z.
        ev("e", IST_ORG, "2026-10-11T10:59:00Z", 10_000),
        ev("f", IST_ORG, "2026-10-11T11:01:00Z", 100_000),
        ev("u1", UTC_ORG, "2026-10-09T23:59:00Z", 1_000_000),
        ev("u2", UTC_ORG, "2026-10-10T00:01:00Z", 10_000_000),
        ev("u3", UTC_ORG, "2026-10-10T23:59:00Z", 100_000_000),
    ]
}

/// A tenancy event as the control plane's outbox relay publishes it, keyed by the org.
fn tenancy(kind: &str, org: &str, data: Value) -> (String, Vec<u8>) {
    let env = Envelope {
        specversion: "1.0".into(),
        id: uuid::Uuid::new_v4().to_string(),
        source: "/leaky-tokens/control-plane".into(),
        kind: kind.into(),
        time: "2026-10-01T00:00:00.000Z".into(),
        subject: Some(org.into()),
        datacontenttype: "application/json".into(),
        schemaversion: 1,
        data,
    };
    (org.to_owned(), serde_json::to_vec(&env).unwrap_or_default())
}

fn created(org: &str, tz: &str) -> (String, Vec<u8>) {
    let data = json!({"id": org, "name": org, "time_zone": tz, "version": 1});
    tenancy("org.created", org, data)
}

fn updated(org: &str, tz: &str, version: i64) -> (String, Vec<u8>) {
    let data = json!({"id": org, "name": org, "time_zone": tz, "version": version});
    tenancy("org.updated", org, data)
}

struct Setup {
    role: Role,
    brokers: String,
    tenancy: String,
    reports: String,
    zones: tokio::task::JoinHandle<()>,
}

async fn setup() -> anyhow::Result<Setup> {
    let brokers = kafka::brokers()?;
    let node = cassandra::node()?;
    let topic = kafka::topic(&brokers, "zones-usage", 2).await?;
    // One partition: a sentinel org's zone landing proves every earlier message was applied.
    let tenancy = kafka::topic(&brokers, "zones-tenancy", 1).await?;
    let reports = kafka::topic(&brokers, "zones-reports", 1).await?;
    let mut config = consumer_config(&brokers, &topic);
    config.max_lateness = Duration::from_secs(3650 * 24 * 3600);
    let role = Role::start(&node, &cassandra::keyspace("zones"), config).await?;
    let mut z = ZoneConfig::new(&brokers, &format!("g-{}", uuid::Uuid::new_v4().simple()));
    z.topic = tenancy.clone();
    let zones = tokio::spawn(ZoneConsumer::new(z, role.store.clone())?.run());
    produce_events(&brokers, &topic, &usage()).await?;
    let done = eventually(60, || async {
        (role.metrics.events.get() >= 9).then_some(())
    })
    .await;
    anyhow::ensure!(done.is_some(), "usage events not written");
    Ok(Setup {
        role,
        brokers,
        tenancy,
        reports,
        zones,
    })
}

impl Setup {
    /// Produces `msgs` and then a sentinel org's creation in `sentinel_tz`, and waits until the
    /// sentinel's zone is stored (so every message before it has been applied).
    async fn tenancy_events(
        &self,
        msgs: &[(String, Vec<u8>)],
        sentinel: &str,
    ) -> anyhow::Result<()> {
        let mut all = msgs.to_vec();
        all.push(created(sentinel, "Europe/Berlin"));
        // One by one: the order on the partition is the order given.
        for m in all {
            produce(&self.brokers, &self.tenancy, &[m]).await?;
        }
        let store = self.role.store.clone();
        let seen = eventually(60, || {
            let store = store.clone();
            async move { zones::get(&store, sentinel).await.ok().flatten() }
        })
        .await;
        anyhow::ensure!(seen.is_some(), "tenancy events not applied");
        Ok(())
    }

    /// A closer whose fallback zone is UTC, closing 10 minutes after a period ends.
    fn closer(&self, now: i64) -> anyhow::Result<Closer> {
        let mut c = CloserConfig::new(&self.brokers);
        c.topic = self.reports.clone();
        c.close_after = Duration::from_secs(600);
        let clock: Clock = Arc::new(move || now);
        Ok(Closer::new(
            c,
            self.role.store.clone(),
            self.role.metrics.clone(),
            clock,
        )?)
    }

    /// Ticks at `now`; the statements handled, by (org, period), as JSON.
    async fn tick(&self, now: &str) -> anyhow::Result<BTreeMap<(String, String), Value>> {
        let now = ms(now);
        let mut out = BTreeMap::new();
        for s in self.closer(now)?.tick(now).await? {
            let body: Value = serde_json::from_str(&s.json)?;
            let org = body["org"].as_str().unwrap_or_default().to_owned();
            out.insert((org, s.period.clone()), body);
        }
        Ok(out)
    }
}

fn key(org: &str, period: &str) -> (String, String) {
    (org.to_owned(), period.to_owned())
}

/// The statement's zone, range and prompt total.
fn summary(s: &Value) -> (&str, &str, &str, i64) {
    (
        s["tz"].as_str().unwrap_or(""),
        s["from"].as_str().unwrap_or(""),
        s["to"].as_str().unwrap_or(""),
        s["totals"]["prompt_tokens"].as_i64().unwrap_or(-1),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_org_closes_at_its_own_midnight_and_follows_zone_changes() -> anyhow::Result<()> {
    let s = setup().await?;
    s.tenancy_events(
        &[created(UTC_ORG, "UTC"), created(IST_ORG, "Asia/Kolkata")],
        "sentinel-1",
    )
    .await?;
    assert_eq!(
        zones::get(&s.role.store, IST_ORG).await?,
        Some(chrono_tz::Asia::Kolkata)
    );

    // 10 minutes after Kolkata's midnight of 11 October: its 9th and 10th close, exact to the
    // minute either side; UTC's 10th is not over, only its 9th closes.
    let t1 = s.tick("2026-10-10T18:45:00Z").await?;
    let ist9 = &t1[&key(IST_ORG, "2026-10-09")];
    let want = (
        "Asia/Kolkata",
        "2026-10-09T00:00:00+05:30",
        "2026-10-10T00:00:00+05:30",
        1,
    );
    assert_eq!(summary(ist9), want);
    let ist10 = &t1[&key(IST_ORG, "2026-10-10")];
    assert_eq!(summary(ist10).3, 10 + 100, "{ist10}");
    assert_eq!(ist10["totals"]["requests"], 2);
    let utc9 = &t1[&key(UTC_ORG, "2026-10-09")];
    let want = (
        "UTC",
        "2026-10-09T00:00:00Z",
        "2026-10-10T00:00:00Z",
        1_000_000,
    );
    assert_eq!(summary(utc9), want);
    assert!(!t1.contains_key(&key(UTC_ORG, "2026-10-10")), "{t1:?}");
    assert_eq!(t1.len(), 3, "{:?}", t1.keys());

    // After UTC midnight: UTC's 10th closes with its own two events.
    let t2 = s.tick("2026-10-11T00:15:00Z").await?;
    let utc10 = &t2[&key(UTC_ORG, "2026-10-10")];
    assert_eq!(summary(utc10).3, 10_000_000 + 100_000_000);

    // The Kolkata org moves to Auckland (version 2); its stale creation event arrives after.
    s.tenancy_events(
        &[
            updated(IST_ORG, "Pacific/Auckland", 2),
            created(IST_ORG, "Asia/Kolkata"),
        ],
        "sentinel-2",
    )
    .await?;
    assert_eq!(
        zones::get(&s.role.store, IST_ORG).await?,
        Some(chrono_tz::Pacific::Auckland)
    );

    // After Auckland's midnight of 12 October: its 11th starts where the Kolkata 10th ended
    // (18:30Z, 07:30 in Auckland), so event c stays billed once and d and e are in; f is the 12th.
    let t3 = s.tick("2026-10-11T11:15:00Z").await?;
    let nz11 = &t3[&key(IST_ORG, "2026-10-11")];
    let want = (
        "Pacific/Auckland",
        "2026-10-11T07:30:00+13:00",
        "2026-10-12T00:00:00+13:00",
        1_000 + 10_000,
    );
    assert_eq!(summary(nz11), want);
    assert_eq!(nz11["adjustments"], json!([]), "{nz11}");
    // The closed Kolkata days are untouched.
    assert_eq!(t3[&key(IST_ORG, "2026-10-10")], *ist10);

    // Every tenancy event again: the zone stays, and closing again gives the same statements.
    s.tenancy_events(
        &[
            created(UTC_ORG, "UTC"),
            created(IST_ORG, "Asia/Kolkata"),
            updated(IST_ORG, "Pacific/Auckland", 2),
        ],
        "sentinel-3",
    )
    .await?;
    assert_eq!(
        zones::get(&s.role.store, IST_ORG).await?,
        Some(chrono_tz::Pacific::Auckland)
    );
    assert_eq!(s.tick("2026-10-11T11:15:00Z").await?, t3);
    s.zones.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_write_never_overwrites_a_newer_version() -> anyhow::Result<()> {
    let node = cassandra::node()?;
    let cfg = leaky_analytics::store::StoreConfig::new(&node, &cassandra::keyspace("zonev"));
    let store = leaky_analytics::connect_store(&cfg).await?;
    let change = |tz: Tz, version| ZoneChange {
        org: "o".into(),
        tz,
        version,
    };
    zones::write(&store, &change(chrono_tz::Pacific::Auckland, 3)).await?;
    zones::write(&store, &change(chrono_tz::Asia::Kolkata, 2)).await?;
    assert_eq!(
        zones::get(&store, "o").await?,
        Some(chrono_tz::Pacific::Auckland)
    );
    zones::write(&store, &change(Tz::UTC, 4)).await?;
    assert_eq!(zones::get(&store, "o").await?, Some(Tz::UTC));
    assert_eq!(zones::get(&store, "nobody").await?, None);
    Ok(())
}
