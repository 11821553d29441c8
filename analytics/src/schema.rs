//! Versioned CQL migrations, applied at start-up by every analytics process.
//!
//! Each migration is a list of idempotent statements (`IF NOT EXISTS`). A starter claims a version
//! with a lightweight transaction (`INSERT … IF NOT EXISTS` on its `schema_migrations` row): the one
//! that wins runs the statements and marks the row applied; the others wait for that mark, so two
//! processes never race DDL (which Cassandra resolves badly: schema disagreement). If the winner dies
//! half-way, a waiter takes over after [`CLAIM_TIMEOUT`]: the statements are idempotent, so running
//! them again is safe.

use std::time::Duration;

use scylla::client::session::Session;
use scylla::frame::types::Consistency;
use scylla::statement::Statement;
use scylla::value::CqlTimestamp;

use crate::error::{db, StoreError};

/// How long a starter waits for another's claimed migration before running it itself.
pub const CLAIM_TIMEOUT: Duration = Duration::from_secs(60);

/// Raw events live 35 days: long enough for a spool replayed days late to recompute its buckets
/// from complete raw rows (the consumer refuses events older than its `max_lateness`, 30 days by
/// default, for that reason). Minute rollups live as long; hour and day rollups are kept.
pub const RAW_TTL_SECS: u32 = 35 * 24 * 3600;

/// A migration: its version, name and statements (`{ks}` stands for the keyspace).
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub statements: &'static [&'static str],
}

/// Every migration, oldest first. Append only: a shipped migration never changes.
pub const MIGRATIONS: &[Migration] = &[
Migration {
    version: 1,
    name: "raw events and rollups",
    statements: &[
        // One partition per org and UTC day; a redelivered event overwrites its own row.
        "CREATE TABLE IF NOT EXISTS {ks}.events (org text, day timestamp, ts timestamp, event_id text, \
         request_id text, key_id text, model text, provider text, status int, requests bigint, \
         errors bigint, prompt_tokens bigint, completion_tokens bigint, total_tokens bigint, \
         latency_us bigint, cost decimal, PRIMARY KEY ((org, day), ts, event_id)) \
         WITH default_time_to_live = {raw_ttl}",
        // Rollups: `part` is the UTC day (minute), month (hour) or year (day) bucket holding the row,
        // `dim` one of all/model/key/provider, `dim_value` its value ('' for all).
        "CREATE TABLE IF NOT EXISTS {ks}.rollup_minute (org text, part timestamp, dim text, \
         bucket timestamp, dim_value text, requests bigint, errors bigint, prompt_tokens bigint, \
         completion_tokens bigint, total_tokens bigint, latency_us bigint, cost decimal, \
         PRIMARY KEY ((org, part), dim, bucket, dim_value)) WITH default_time_to_live = {raw_ttl}",
        "CREATE TABLE IF NOT EXISTS {ks}.rollup_hour (org text, part timestamp, dim text, \
         bucket timestamp, dim_value text, requests bigint, errors bigint, prompt_tokens bigint, \
         completion_tokens bigint, total_tokens bigint, latency_us bigint, cost decimal, \
         PRIMARY KEY ((org, part), dim, bucket, dim_value))",
        "CREATE TABLE IF NOT EXISTS {ks}.rollup_day (org text, part timestamp, dim text, \
         bucket timestamp, dim_value text, requests bigint, errors bigint, prompt_tokens bigint, \
         completion_tokens bigint, total_tokens bigint, latency_us bigint, cost decimal, \
         PRIMARY KEY ((org, part), dim, bucket, dim_value))",
    ],
}, Migration {
    version: 2,
    name: "prices, statements, adjustments, active orgs",
    statements: &[
        // One small partition (`book` = 'default'): the whole table is read in one partition read.
        // A version is (model, effective_from); past versions are never rewritten.
        "CREATE TABLE IF NOT EXISTS {ks}.prices (book text, model text, effective_from timestamp, \
         input_per_mtok decimal, output_per_mtok decimal, currency text, \
         PRIMARY KEY ((book), model, effective_from))",
        // Closed statements, one partition per org and year (at most 12 months + 366 days of
        // rows); written once with IF NOT EXISTS so racing closers agree on one.
        "CREATE TABLE IF NOT EXISTS {ks}.statements (org text, year int, period text, kind text, \
         tz text, json text, csv text, snapshot text, adjustments text, event_id text, closed_by text, \
         emitted boolean, PRIMARY KEY ((org, year), period))",
        // Adjustments already carried for a closed period, by the statement that carried them.
        "CREATE TABLE IF NOT EXISTS {ks}.statement_adjustments (org text, period text, \
         carried_in text, model text, price_from text, requests bigint, prompt_tokens bigint, \
         completion_tokens bigint, PRIMARY KEY ((org, period), carried_in, model, price_from))",
        // The orgs with usage on a UTC day (event day and arrival day): who gets a statement.
        "CREATE TABLE IF NOT EXISTS {ks}.active_orgs (day timestamp, org text, \
         PRIMARY KEY ((day), org)) WITH default_time_to_live = {raw_ttl}",
    ],
},
Migration {
    version: 3,
    name: "anomalies",
    statements: &[
        // One row per (org, UTC day, anomalous minute, subject, kind): a replayed detection
        // overwrites its own row. `subject` is the key id, '' for the org as a whole.
        "CREATE TABLE IF NOT EXISTS {ks}.anomalies (org text, day timestamp, ts timestamp, \
         subject text, kind text, id text, score double, baseline double, spread double, \
         observed double, explanation text, PRIMARY KEY ((org, day), ts, subject, kind))",
    ],
},
Migration {
    version: 4,
    name: "org time zones",
    statements: &[
        // Each org's IANA zone as the control plane last set it (`org.created` / `org.updated` on
        // leaky.tenancy.v1), written `USING TIMESTAMP` the org's version: a redelivered or
        // reordered event never overwrites a newer zone.
        "CREATE TABLE IF NOT EXISTS {ks}.org_zones (org text PRIMARY KEY, tz text, version bigint)",
    ],
}];

/// Whether `ks` can be spliced into CQL: Cassandra's unquoted identifier rules, lower case.
pub fn valid_keyspace(ks: &str) -> bool {
    let mut chars = ks.chars();
    matches!(chars.next(), Some('a'..='z'))
        && ks.len() <= 48
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
}

/// Creates the keyspace (SimpleStrategy with `replication_factor`) and applies every migration not
/// applied yet. Returns the versions this call applied.
pub async fn migrate(
    session: &Session,
    ks: &str,
    replication_factor: u32,
    owner: &str,
) -> Result<Vec<i32>, StoreError> {
    if !valid_keyspace(ks) {
        return Err(StoreError::Config(format!("invalid keyspace name {ks:?}")));
    }
    let create = format!(
        "CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = \
         {{'class': 'SimpleStrategy', 'replication_factor': {replication_factor}}}"
    );
    session.query_unpaged(create, ()).await.map_err(db)?;
    let table = format!(
        "CREATE TABLE IF NOT EXISTS {ks}.schema_migrations (version int PRIMARY KEY, name text, \
         claimed_by text, claimed_at timestamp, applied_at timestamp)"
    );
    session.query_unpaged(table, ()).await.map_err(db)?;
    session.await_schema_agreement().await.map_err(db)?;
    let mut applied = Vec::new();
    for m in MIGRATIONS {
        if apply_one(session, ks, m, owner).await? {
            applied.push(m.version);
        }
    }
    Ok(applied)
}

fn now() -> CqlTimestamp {
    CqlTimestamp(chrono::Utc::now().timestamp_millis())
}

/// Applies `m` unless it was applied; `true` if this call ran its statements.
async fn apply_one(
    session: &Session,
    ks: &str,
    m: &Migration,
    owner: &str,
) -> Result<bool, StoreError> {
    if applied_at(session, ks, m.version).await?.is_some() {
        return Ok(false);
    }
    let claim = format!(
        "INSERT INTO {ks}.schema_migrations (version, name, claimed_by, claimed_at) \
         VALUES (?, ?, ?, ?) IF NOT EXISTS"
    );
    session
        .query_unpaged(claim, (m.version, m.name, owner, now()))
        .await
        .map_err(db)?;
    // Who holds the claim, read linearizably (SERIAL) rather than parsed out of the LWT's answer,
    // whose columns differ between a won and a lost claim.
    let won = claimed_by(session, ks, m.version).await?.as_deref() == Some(owner);
    if !won && wait_for_other(session, ks, m.version).await? {
        return Ok(false);
    }
    run_statements(session, ks, m).await?;
    let mark = format!("UPDATE {ks}.schema_migrations SET applied_at = ? WHERE version = ?");
    session
        .query_unpaged(mark, (now(), m.version))
        .await
        .map_err(db)?;
    tracing::info!(
        keyspace = ks,
        version = m.version,
        name = m.name,
        "cql migration applied"
    );
    Ok(true)
}

async fn run_statements(session: &Session, ks: &str, m: &Migration) -> Result<(), StoreError> {
    for s in m.statements {
        let cql = s
            .replace("{ks}", ks)
            .replace("{raw_ttl}", &RAW_TTL_SECS.to_string());
        session.query_unpaged(cql, ()).await.map_err(db)?;
    }
    session.await_schema_agreement().await.map_err(db)?;
    Ok(())
}

/// Waits for another starter's claim to be applied: `true` once it is, `false` after
/// [`CLAIM_TIMEOUT`] (the claimant is presumed dead).
async fn wait_for_other(session: &Session, ks: &str, version: i32) -> Result<bool, StoreError> {
    let deadline = tokio::time::Instant::now() + CLAIM_TIMEOUT;
    while tokio::time::Instant::now() < deadline {
        if applied_at(session, ks, version).await?.is_some() {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tracing::warn!(
        keyspace = ks,
        version,
        "claimed migration not applied in time; applying it"
    );
    Ok(false)
}

async fn claimed_by(
    session: &Session,
    ks: &str,
    version: i32,
) -> Result<Option<String>, StoreError> {
    let mut q = Statement::new(format!(
        "SELECT claimed_by FROM {ks}.schema_migrations WHERE version = ?"
    ));
    q.set_consistency(Consistency::Serial);
    let res = session
        .query_unpaged(q, (version,))
        .await
        .map_err(db)?
        .into_rows_result()
        .map_err(db)?;
    let row = res.maybe_first_row::<(Option<String>,)>().map_err(db)?;
    Ok(row.and_then(|(c,)| c))
}

async fn applied_at(
    session: &Session,
    ks: &str,
    version: i32,
) -> Result<Option<CqlTimestamp>, StoreError> {
    let q = format!("SELECT applied_at FROM {ks}.schema_migrations WHERE version = ?");
    let res = session
        .query_unpaged(q, (version,))
        .await
        .map_err(db)?
        .into_rows_result()
        .map_err(db)?;
    let row = res
        .maybe_first_row::<(Option<CqlTimestamp>,)>()
        .map_err(db)?;
    Ok(row.and_then(|(t,)| t))
}

/// The versions applied in `ks`, ascending.
pub async fn applied_versions(session: &Session, ks: &str) -> Result<Vec<i32>, StoreError> {
    let q = format!("SELECT version, applied_at FROM {ks}.schema_migrations");
    let res = session
        .query_unpaged(q, ())
        .await
        .map_err(db)?
        .into_rows_result()
        .map_err(db)?;
    let mut out: Vec<i32> = res
        .rows::<(i32, Option<CqlTimestamp>)>()
        .map_err(db)?
        .filter_map(Result::ok)
        .filter(|(_, at)| at.is_some())
        .map(|(v, _)| v)
        .collect();
    out.sort_unstable();
    Ok(out)
}
