//! Operator maintenance of the ledger: `leaky-tokens control-plane ledger rebuild` — rebuild the
//! projections from the streams and report the drift each rebuild fixed.

use sqlx::PgPool;
use uuid::Uuid;

use super::{orgs, rebuild, verify, Balance, Drift, LedgerError};
use crate::db;

/// What rebuilding one org found and left.
#[derive(Debug)]
pub struct Repair {
    pub org: Uuid,
    /// The drift the rebuild fixed, if the projection had drifted.
    pub fixed: Option<Box<Drift>>,
    pub balance: Balance,
}

/// Rebuilds `org`'s projections, or every org's with a stream when `None`.
pub async fn repair(pool: &PgPool, org: Option<Uuid>) -> Result<Vec<Repair>, LedgerError> {
    let targets = match org {
        Some(org) => vec![org],
        None => orgs(pool).await?,
    };
    let mut done = Vec::with_capacity(targets.len());
    for org in targets {
        let fixed = match verify(pool, org).await {
            Ok(()) => None,
            Err(LedgerError::Drift(d)) => Some(d),
            Err(e) => return Err(e),
        };
        let balance = rebuild(pool, org).await?;
        done.push(Repair {
            org,
            fixed,
            balance,
        });
    }
    Ok(done)
}

/// The CLI's command: connects to `database_url` (migrating it first), runs [`repair`] and returns one
/// report line per org.
pub async fn rebuild_command(database_url: &str, org: Option<&str>) -> Result<Vec<String>, String> {
    let org = org
        .map(|o| Uuid::parse_str(o).map_err(|e| format!("--org `{o}`: {e}")))
        .transpose()?;
    let pool = db::pool(database_url, 2).map_err(|e| e.to_string())?;
    db::migrate(&pool).await.map_err(|e| e.to_string())?;
    let repairs = repair(&pool, org).await.map_err(|e| e.to_string())?;
    Ok(repairs
        .iter()
        .map(|r| match &r.fixed {
            Some(d) => format!("org {}: drift fixed: {d}", r.org),
            None => format!(
                "org {}: consistent at version {} (tokens {})",
                r.org, r.balance.version, r.balance.tokens
            ),
        })
        .collect())
}
