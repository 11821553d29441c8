//! The streams themselves: appending at an expected version (with the projection update and the
//! outbox event in the same transaction) and reading entries back.

use chrono::{DateTime, Utc};
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

use super::{projection, Entry, Kind, LedgerError, LEDGER_TOPIC};
use crate::outbox::{self, Event};

/// An entry before it has a place in the stream.
#[derive(Debug, Clone)]
pub struct NewEntry {
    pub kind: Kind,
    pub tokens: i64,
    pub reference: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub occurred_at: DateTime<Utc>,
    pub data: serde_json::Value,
}

#[derive(sqlx::FromRow)]
pub(super) struct Row {
    id: Uuid,
    org_id: Uuid,
    version: i64,
    kind: String,
    tokens: i64,
    #[sqlx(rename = "ref")]
    reference: String,
    expires_at: Option<DateTime<Utc>>,
    occurred_at: DateTime<Utc>,
    data: serde_json::Value,
}

pub(super) const COLUMNS: &str =
    "id, org_id, version, kind, tokens, ref, expires_at, occurred_at, data";

impl Row {
    pub(super) fn entry(self) -> Result<Entry, LedgerError> {
        let kind = Kind::parse(&self.kind).ok_or_else(|| {
            LedgerError::Db(sqlx::Error::Decode(
                format!("unknown entry kind `{}`", self.kind).into(),
            ))
        })?;
        Ok(Entry {
            id: self.id,
            org: self.org_id,
            version: self.version,
            kind,
            tokens: self.tokens,
            reference: self.reference,
            expires_at: self.expires_at,
            occurred_at: self.occurred_at,
            data: self.data,
        })
    }
}

/// Appends `entries` to `org`'s stream, which must be at `expected_version`, updates the projection
/// and writes one outbox event per entry — all on `conn`, inside a savepoint, so a
/// [`LedgerError::Conflict`] (the stream moved) leaves the caller's transaction usable for a retry.
pub async fn append(
    conn: &mut PgConnection,
    org: Uuid,
    expected_version: i64,
    entries: Vec<NewEntry>,
) -> Result<Vec<Entry>, LedgerError> {
    let mut sp = conn.begin().await?;
    let head: i64 = sqlx::query_scalar(
        "SELECT coalesce(max(version), 0) FROM ledger.entries WHERE org_id = $1",
    )
    .bind(org)
    .fetch_one(&mut *sp)
    .await?;
    if head != expected_version {
        return Err(LedgerError::Conflict(org));
    }
    let mut written = Vec::with_capacity(entries.len());
    for (version, new) in (expected_version + 1..).zip(entries) {
        let entry = insert(&mut sp, org, version, new).await?;
        let after = projection::apply(&mut sp, &entry).await?;
        let data = serde_json::json!({ "entry": &entry, "balance": after });
        let event = Event {
            aggregate_type: "ledger",
            aggregate_id: org.to_string(),
            kind: entry.kind.event_type(),
            topic: LEDGER_TOPIC,
            data,
        };
        outbox::append(&mut sp, event).await?;
        written.push(entry);
    }
    sp.commit().await?;
    Ok(written)
}

/// Inserts one entry; a taken version or `(org, kind, ref)` is a [`LedgerError::Conflict`].
async fn insert(
    conn: &mut PgConnection,
    org: Uuid,
    version: i64,
    new: NewEntry,
) -> Result<Entry, LedgerError> {
    let sql = format!(
        "INSERT INTO ledger.entries ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {COLUMNS}"
    );
    let row: Result<Row, sqlx::Error> = sqlx::query_as(&sql)
        .bind(Uuid::new_v4())
        .bind(org)
        .bind(version)
        .bind(new.kind.as_str())
        .bind(new.tokens)
        .bind(&new.reference)
        .bind(new.expires_at)
        .bind(new.occurred_at)
        .bind(&new.data)
        .fetch_one(conn)
        .await;
    match row {
        Ok(row) => row.entry(),
        Err(e)
            if e.as_database_error()
                .is_some_and(|d| d.is_unique_violation()) =>
        {
            Err(LedgerError::Conflict(org))
        }
        Err(e) => Err(e.into()),
    }
}

/// The entry `(org, kind, ref)`, if the command that writes it already ran.
pub(super) async fn find(
    conn: &mut PgConnection,
    org: Uuid,
    kind: Kind,
    reference: &str,
) -> Result<Option<Entry>, LedgerError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM ledger.entries WHERE org_id = $1 AND kind = $2 AND ref = $3"
    );
    let row: Option<Row> = sqlx::query_as(&sql)
        .bind(org)
        .bind(kind.as_str())
        .bind(reference)
        .fetch_optional(conn)
        .await?;
    row.map(Row::entry).transpose()
}

/// Up to `limit` entries of `org`, newest first, with versions below `before`.
pub async fn entries(
    pool: &PgPool,
    org: Uuid,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<Entry>, LedgerError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM ledger.entries WHERE org_id = $1 AND version < $2
         ORDER BY version DESC LIMIT $3"
    );
    let rows: Vec<Row> = sqlx::query_as(&sql)
        .bind(org)
        .bind(before.unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(pool)
        .await?;
    rows.into_iter().map(Row::entry).collect()
}

/// Every org with a stream.
pub async fn orgs(pool: &PgPool) -> Result<Vec<Uuid>, LedgerError> {
    Ok(
        sqlx::query_scalar("SELECT DISTINCT org_id FROM ledger.entries ORDER BY org_id")
            .fetch_all(pool)
            .await?,
    )
}
