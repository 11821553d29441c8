//! Tenancy's change feed for the config server: what the data plane must know (API keys, tiers) in the
//! config's own shapes (`leaky_config::KeySpec`, `TierSpec`), and a revision counter so "what changed
//! since revision R?" is an index range, not a scan of every key.
//!
//! The counter and each key's `changed_rev` are maintained by triggers (migration `0004_config.sql`):
//! every write path bumps them in its own transaction, and the counter's row lock orders revisions by
//! commit. Read them inside one `REPEATABLE READ` transaction to get a consistent pair.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use leaky_config::{KeySpec, PolicySpec, Priority, TierSpec};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use super::TenancyError;

/// One key change since a revision.
#[derive(Debug, Clone)]
pub enum KeyChange {
    /// Created, re-tiered, rotated (its `expires_at` is now the end of the grace period): push it.
    Upsert(KeySpec),
    /// Revoked, or its grace period is over: take it away.
    Remove(String),
}

/// The tenancy revision: bumped by every change the data plane must see.
pub async fn revision(conn: &mut PgConnection) -> Result<i64, TenancyError> {
    let (value,): (i64,) = sqlx::query_as("SELECT value FROM tenancy.revision")
        .fetch_one(conn)
        .await?;
    Ok(value)
}

#[derive(sqlx::FromRow)]
struct KeyRow {
    id: Uuid,
    org_id: Uuid,
    key_sha256: Vec<u8>,
    tier: String,
    models: Vec<String>,
    expires_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
    live: bool,
}

/// Liveness is judged by `clock_timestamp()`, not `now()`: `now()` is the reader's transaction start,
/// which can precede a revocation (`revoked_at` = the revoking transaction's start) that the reader's
/// later statement sees committed; by `now()` that key would still look live, revoked "in the future",
/// and be pushed as an upsert instead of a removal, with nothing left to remove it later.
///
/// An org's `plan_tier` (set by its subscription through [`super::orgs::set_plan_tier`]) overrides
/// each key's own tier, so keys created later follow the plan too.
const KEY_SQL: &str = "SELECT k.id, k.org_id, k.key_sha256, coalesce(o.plan_tier, k.tier) AS tier,
    k.models, k.expires_at, k.revoked_at,
    (k.revoked_at IS NULL OR k.revoked_at > clock_timestamp()) AS live
    FROM tenancy.api_keys k JOIN tenancy.orgs o ON o.id = k.org_id";

impl KeyRow {
    /// The key as the proxy's config knows it. The org and the user are ids: stable across renames,
    /// the same ids the admin API's paths use. A key belongs to no user of its own, so it is its own
    /// user (per-user limits are per key). A key ending its rotation grace expires at `revoked_at`.
    fn spec(self) -> KeySpec {
        let end = match (self.expires_at, self.revoked_at) {
            (Some(e), Some(r)) => Some(e.min(r)),
            (e, r) => e.or(r),
        };
        KeySpec {
            id: self.id.to_string(),
            sha256: hex::encode(&self.key_sha256),
            user: self.id.to_string(),
            org: Some(self.org_id.to_string()),
            tier: self.tier,
            roles: Vec::new(),
            models: self.models,
            expires_at: end.map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true)),
        }
    }
}

/// Every key the data plane should hold now (not revoked, or still in a rotation's grace period).
pub async fn live_keys(conn: &mut PgConnection) -> Result<Vec<KeySpec>, TenancyError> {
    let sql = format!(
        "{KEY_SQL} WHERE k.revoked_at IS NULL OR k.revoked_at > clock_timestamp() ORDER BY k.id"
    );
    let rows: Vec<KeyRow> = sqlx::query_as(&sql).fetch_all(conn).await?;
    Ok(rows.into_iter().map(KeyRow::spec).collect())
}

/// The keys changed after revision `since` up to and including `until`.
pub async fn key_changes(
    conn: &mut PgConnection,
    since: i64,
    until: i64,
) -> Result<Vec<KeyChange>, TenancyError> {
    let sql = format!("{KEY_SQL} WHERE k.changed_rev > $1 AND k.changed_rev <= $2 ORDER BY k.id");
    let rows: Vec<KeyRow> = sqlx::query_as(&sql)
        .bind(since)
        .bind(until)
        .fetch_all(conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            if r.live {
                KeyChange::Upsert(r.spec())
            } else {
                KeyChange::Remove(r.id.to_string())
            }
        })
        .collect())
}

/// Every tier, in the config's shape (see [`tier_spec`]).
pub async fn tiers(conn: &mut PgConnection) -> Result<BTreeMap<String, TierSpec>, TenancyError> {
    let rows: Vec<(String, Value)> = sqlx::query_as("SELECT name, limits FROM tenancy.tiers")
        .fetch_all(conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(name, limits)| {
            let spec = tier_spec(&name, &limits);
            (name, spec)
        })
        .collect())
}

/// The limit entries a tier's `limits` object may hold, and the policy each becomes.
pub const LIMIT_FIELDS: [&str; 7] = [
    "requests_per_minute",
    "requests_per_day",
    "tokens_per_minute",
    "tokens_per_day",
    "tokens_per_month",
    "priority",
    "description",
];

/// A tier's `limits` object as a config tier: `requests_per_minute` and `tokens_per_minute` become
/// per-key rate limits, `requests_per_day`, `tokens_per_day` and `tokens_per_month` calendar quotas,
/// `priority` (`low`, `normal`, `high`) the shedding priority. Entries are validated when written
/// ([`super::tiers::put`]), so anything else is ignored here.
pub fn tier_spec(name: &str, limits: &Value) -> TierSpec {
    let num = |k: &str| limits.get(k).and_then(Value::as_u64);
    let policy = |suffix: &str, fields: Value| -> Option<PolicySpec> {
        let mut spec = serde_json::json!({ "name": format!("{name}-{suffix}") });
        if let (Some(map), Some(extra)) = (spec.as_object_mut(), fields.as_object()) {
            map.extend(extra.clone());
        }
        serde_json::from_value(spec).ok()
    };
    let rate = |unit: &str, n: u64| serde_json::json!({ "unit": unit, "rate": n, "per": "minute" });
    let quota = |unit: &str, window: &str, n: u64| serde_json::json!({ "unit": unit, "quota": window, "limit": n });
    let mut policies = Vec::new();
    let wanted = [
        (
            "rpm",
            num("requests_per_minute").map(|n| rate("requests", n)),
        ),
        (
            "rpd",
            num("requests_per_day").map(|n| quota("requests", "daily", n)),
        ),
        ("tpm", num("tokens_per_minute").map(|n| rate("tokens", n))),
        (
            "tpd",
            num("tokens_per_day").map(|n| quota("tokens", "daily", n)),
        ),
        (
            "tpmo",
            num("tokens_per_month").map(|n| quota("tokens", "monthly", n)),
        ),
    ];
    for (suffix, fields) in wanted {
        if let Some(p) = fields.and_then(|f| policy(suffix, f)) {
            policies.push(p);
        }
    }
    let priority = limits
        .get("priority")
        .cloned()
        .and_then(|p| serde_json::from_value::<Priority>(p).ok())
        .unwrap_or_default();
    TierSpec {
        description: limits
            .get("description")
            .and_then(Value::as_str)
            .map(str::to_owned),
        priority,
        limits: policies,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_tier_object_becomes_rate_limits_and_quotas_named_after_the_tier() {
        let limits = serde_json::json!({
            "requests_per_minute": 20, "tokens_per_day": 100000, "priority": "low",
            "description": "free"
        });
        let spec = tier_spec("free", &limits);
        let v = serde_json::to_value(&spec).unwrap();
        assert_eq!(v["priority"], "low");
        assert_eq!(v["description"], "free");
        let names: Vec<&str> = spec.limits.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["free-rpm", "free-tpd"]);
        assert_eq!(v["limits"][0]["rate"], 20);
        assert_eq!(v["limits"][0]["per"], "minute");
        assert_eq!(v["limits"][1]["quota"], "daily");
        assert_eq!(v["limits"][1]["limit"], 100000);
    }
}
