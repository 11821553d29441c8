//! The price table: per model, input and output prices per million tokens as exact decimals,
//! versioned by the UTC instant each version takes effect. The price of an event is the version in
//! effect at the event's time, so a price change never reprices the past.
//!
//! Versions live in Cassandra (`prices`, one partition) and are seeded at start-up from a YAML file
//! (`--prices`, see `config/prices.yaml`) with `IF NOT EXISTS`, so a file edited after the fact
//! cannot rewrite a version already stored. `PUT /v1/prices/{model}` adds a version that takes effect
//! now or later; a version whose `effective_from` has passed is immutable.
//!
//! `effective_from` must fall on a whole UTC hour: statements split a model's usage into lines per
//! price version from hourly rollups, and an hour bucket then always has exactly one price.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat};
use futures::TryStreamExt;
use rust_decimal::Decimal;
use scylla::value::{CqlDecimal, CqlTimestamp};
use serde::{Deserialize, Serialize};
use yaml_rust2::{Yaml, YamlLoader};

use crate::buckets::HOUR_MS;
use crate::store::{db, from_cql, to_cql, Store, StoreError};

/// The only price book (the partition key of `prices`).
const BOOK: &str = "default";
/// How long a loaded book serves cost lookups before the consumer reloads it (another replica may
/// have added a version).
pub const RELOAD_EVERY: Duration = Duration::from_secs(10);
/// A version added through the API takes effect at least this far ahead, so every consumer (which
/// reloads every [`RELOAD_EVERY`]) costs the first event at its time with it.
pub const MIN_LEAD_MS: i64 = 60_000;

/// One price version of a model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceVersion {
    pub model: String,
    /// When this version takes effect (RFC 3339 on the wire, ms since the epoch here).
    #[serde(with = "rfc3339")]
    pub effective_from: i64,
    pub input_per_mtok: Decimal,
    pub output_per_mtok: Decimal,
    /// ISO 4217 code; one currency per book, so statement totals add up.
    pub currency: String,
}

impl PriceVersion {
    /// The exact cost of `prompt` input and `completion` output tokens at this version (no rounding:
    /// statements round, storage keeps full precision).
    pub fn cost(&self, prompt: i64, completion: i64) -> Decimal {
        let mtok = Decimal::from(1_000_000);
        (Decimal::from(prompt) * self.input_per_mtok
            + Decimal::from(completion) * self.output_per_mtok)
            / mtok
    }

    /// Why this version cannot be stored, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        if self.model.is_empty() || self.model.len() > 200 {
            return Err("model must be 1 to 200 characters".into());
        }
        if self.effective_from.rem_euclid(HOUR_MS) != 0 {
            return Err("effective_from must be on a whole UTC hour".into());
        }
        if self.input_per_mtok.is_sign_negative() || self.output_per_mtok.is_sign_negative() {
            return Err("prices must not be negative".into());
        }
        let code_ok =
            self.currency.len() == 3 && self.currency.bytes().all(|b| b.is_ascii_uppercase());
        if !code_ok {
            return Err("currency must be an ISO 4217 code such as USD".into());
        }
        Ok(())
    }
}

/// RFC 3339 (UTC) for `effective_from`.
pub mod rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::instant(*ms))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        let s = String::deserialize(d)?;
        chrono::DateTime::parse_from_rfc3339(&s)
            .map(|t| t.timestamp_millis())
            .map_err(|_| serde::de::Error::custom("effective_from must be RFC 3339"))
    }
}

/// An instant as RFC 3339 UTC with second precision (`2026-11-01T00:00:00Z`).
pub fn instant(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Every version, per model, oldest first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PriceBook {
    by_model: BTreeMap<String, Vec<PriceVersion>>,
}

impl PriceBook {
    pub fn new(versions: impl IntoIterator<Item = PriceVersion>) -> PriceBook {
        let mut by_model: BTreeMap<String, Vec<PriceVersion>> = BTreeMap::new();
        for v in versions {
            by_model.entry(v.model.clone()).or_default().push(v);
        }
        for vs in by_model.values_mut() {
            vs.sort_by_key(|v| v.effective_from);
            vs.dedup_by_key(|v| v.effective_from);
        }
        PriceBook { by_model }
    }

    /// The version of `model` in effect at `ts`, if the model is priced then.
    pub fn at(&self, model: &str, ts: i64) -> Option<&PriceVersion> {
        let vs = self.by_model.get(model)?;
        let after = vs.partition_point(|v| v.effective_from <= ts);
        after.checked_sub(1).and_then(|i| vs.get(i))
    }

    /// Every version, by model then time.
    pub fn versions(&self) -> impl Iterator<Item = &PriceVersion> {
        self.by_model.values().flatten()
    }

    /// The book's currency (`USD` when empty).
    pub fn currency(&self) -> &str {
        self.versions()
            .next()
            .map(|v| v.currency.as_str())
            .unwrap_or("USD")
    }
}

/// The book a process uses for costs, reloaded from Cassandra when older than [`RELOAD_EVERY`].
#[derive(Default)]
pub struct Prices {
    current: RwLock<(Arc<PriceBook>, Option<Instant>)>,
}

impl Prices {
    /// The loaded book (reloading it first when stale; a failed reload keeps the old one, logged).
    pub async fn book(&self, store: &Store) -> Arc<PriceBook> {
        let (book, loaded) = self.snapshot();
        if loaded.is_some_and(|t| t.elapsed() < RELOAD_EVERY) {
            return book;
        }
        match load(store).await {
            Ok(fresh) => self.set(fresh),
            Err(e) => {
                tracing::warn!(error = %e, "price table reload failed; keeping the loaded one");
                book
            }
        }
    }

    /// Replaces the loaded book.
    pub fn set(&self, book: PriceBook) -> Arc<PriceBook> {
        let book = Arc::new(book);
        if let Ok(mut g) = self.current.write() {
            *g = (book.clone(), Some(Instant::now()));
        }
        book
    }

    fn snapshot(&self) -> (Arc<PriceBook>, Option<Instant>) {
        match self.current.read() {
            Ok(g) => (g.0.clone(), g.1),
            Err(_) => (Arc::default(), None),
        }
    }
}

/// Costs each row at the version in effect at its time; returns how many rows had no price (their
/// cost stays 0 and the statement flags their line `unpriced`).
pub fn apply(book: &PriceBook, rows: &mut [crate::event::UsageRow]) -> u64 {
    let mut unpriced = 0;
    for r in rows {
        match book.at(&r.model, r.ts) {
            Some(v) => r.totals.cost = v.cost(r.totals.prompt_tokens, r.totals.completion_tokens),
            None => {
                r.totals.cost = Decimal::ZERO;
                unpriced += 1;
            }
        }
    }
    unpriced
}

/// Reads every stored version.
pub async fn load(store: &Store) -> Result<PriceBook, StoreError> {
    let ks = store.keyspace();
    let q = format!(
        "SELECT model, effective_from, input_per_mtok, output_per_mtok, currency \
         FROM {ks}.prices WHERE book = ?"
    );
    let mut rows = store
        .session()
        .query_iter(q, (BOOK,))
        .await
        .map_err(db)?
        .rows_stream::<(String, CqlTimestamp, CqlDecimal, CqlDecimal, String)>()
        .map_err(db)?;
    let mut out = Vec::new();
    while let Some((model, from, input, output, currency)) = rows.try_next().await.map_err(db)? {
        out.push(PriceVersion {
            model,
            effective_from: from.0,
            input_per_mtok: from_cql(&input),
            output_per_mtok: from_cql(&output),
            currency,
        });
    }
    Ok(PriceBook::new(out))
}

/// Stores `v`; with `only_new`, never overwrites a stored version (`IF NOT EXISTS`).
async fn insert(store: &Store, v: &PriceVersion, only_new: bool) -> Result<(), StoreError> {
    let ks = store.keyspace();
    let lwt = if only_new { " IF NOT EXISTS" } else { "" };
    let q = format!(
        "INSERT INTO {ks}.prices (book, model, effective_from, input_per_mtok, output_per_mtok, \
         currency) VALUES (?, ?, ?, ?, ?, ?){lwt}"
    );
    let values = (
        BOOK,
        &v.model,
        CqlTimestamp(v.effective_from),
        to_cql(v.input_per_mtok),
        to_cql(v.output_per_mtok),
        &v.currency,
    );
    store.session().query_unpaged(q, values).await.map_err(db)?;
    Ok(())
}

/// Seeds the versions of a price file: each is added unless stored already (a stored version,
/// past or future, is left as it is: the file cannot rewrite history).
pub async fn seed(store: &Store, versions: &[PriceVersion]) -> Result<(), StoreError> {
    for v in versions {
        insert(store, v, true).await?;
    }
    Ok(())
}

/// Why a `PUT` is refused.
#[derive(Debug, thiserror::Error)]
pub enum PutError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Immutable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Adds (or, while still in the future, replaces) a version. A version taking effect before `now`
/// would reprice events already costed and statements already closed: refused; so is one less than
/// [`MIN_LEAD_MS`] away.
pub async fn put(store: &Store, v: &PriceVersion, now: i64) -> Result<PriceBook, PutError> {
    v.check().map_err(PutError::Invalid)?;
    if v.effective_from < now {
        return Err(PutError::Immutable(format!(
            "effective_from {} has passed; past price versions are immutable, add a new version",
            instant(v.effective_from)
        )));
    }
    if v.effective_from < now + MIN_LEAD_MS {
        return Err(PutError::Invalid(format!(
            "effective_from {} is less than a minute away: every replica must have loaded the \
             version before it takes effect",
            instant(v.effective_from)
        )));
    }
    let book = load(store).await?;
    if book.currency() != v.currency && book.versions().next().is_some() {
        return Err(PutError::Invalid(format!(
            "the price table is in {}; one currency per table",
            book.currency()
        )));
    }
    insert(store, v, false).await?;
    Ok(load(store).await?)
}

/// Parses a price file:
///
/// ```yaml
/// currency: USD
/// prices:
///   - model: gpt-4o
///     effective_from: 2024-05-13T00:00:00Z
///     input_per_mtok: "2.50"
///     output_per_mtok: "10.00"
/// ```
pub fn parse_file(text: &str) -> Result<Vec<PriceVersion>, String> {
    let docs = YamlLoader::load_from_str(text).map_err(|e| format!("price file: {e}"))?;
    let doc = docs.first().ok_or("price file is empty")?;
    let currency = doc["currency"].as_str().unwrap_or("USD").to_owned();
    let list = doc["prices"]
        .as_vec()
        .ok_or("price file: `prices` must be a list")?;
    let mut out = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let v = parse_entry(item, &currency).map_err(|e| format!("prices[{i}]: {e}"))?;
        v.check().map_err(|e| format!("prices[{i}]: {e}"))?;
        out.push(v);
    }
    Ok(out)
}

fn parse_entry(item: &Yaml, currency: &str) -> Result<PriceVersion, String> {
    let text = |k: &str| -> Result<String, String> {
        match &item[k] {
            Yaml::String(s) | Yaml::Real(s) => Ok(s.clone()),
            Yaml::Integer(n) => Ok(n.to_string()),
            _ => Err(format!("`{k}` is required")),
        }
    };
    let decimal = |k: &str| -> Result<Decimal, String> {
        text(k)?
            .parse::<Decimal>()
            .map_err(|_| format!("`{k}` is not a decimal"))
    };
    let from = text("effective_from")?;
    let effective_from = DateTime::parse_from_rfc3339(&from)
        .map_err(|_| "`effective_from` must be RFC 3339".to_owned())?
        .timestamp_millis();
    Ok(PriceVersion {
        model: text("model")?,
        effective_from,
        input_per_mtok: decimal("input_per_mtok")?,
        output_per_mtok: decimal("output_per_mtok")?,
        currency: item["currency"].as_str().unwrap_or(currency).to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(model: &str, from: &str, input: &str, output: &str) -> PriceVersion {
        PriceVersion {
            model: model.into(),
            effective_from: DateTime::parse_from_rfc3339(from)
                .map(|t| t.timestamp_millis())
                .unwrap_or_default(),
            input_per_mtok: input.parse().unwrap_or_default(),
            output_per_mtok: output.parse().unwrap_or_default(),
            currency: "USD".into(),
        }
    }

    #[test]
    fn the_version_in_effect_at_the_event_time_prices_it() {
        let book = PriceBook::new([
            v("m", "2026-11-15T00:00:00Z", "1", "2"),
            v("m", "2026-01-01T00:00:00Z", "3", "4"),
        ]);
        let at = |s: &str| {
            let t = DateTime::parse_from_rfc3339(s)
                .map(|t| t.timestamp_millis())
                .unwrap_or(0);
            book.at("m", t).map(|v| v.input_per_mtok)
        };
        assert_eq!(at("2025-12-31T23:59:59Z"), None);
        assert_eq!(at("2026-11-14T23:59:59.999Z"), Some(Decimal::from(3)));
        assert_eq!(at("2026-11-15T00:00:00Z"), Some(Decimal::from(1)));
        assert!(book.at("other", 0).is_none());
    }

    #[test]
    fn cost_is_exact() {
        let p = v("m", "2026-01-01T00:00:00Z", "0.15", "0.60");
        // 1,234,567 × 0.15 / 1e6 + 7 × 0.60 / 1e6 = 0.18518505 + 0.0000042
        assert_eq!(
            p.cost(1_234_567, 7),
            "0.18518925".parse().unwrap_or_default()
        );
        let tiny = v("m", "2026-01-01T00:00:00Z", "0.075", "0.3");
        assert_eq!(tiny.cost(1, 1), "0.000000375".parse().unwrap_or_default());
    }

    #[test]
    fn versions_must_start_on_an_hour() {
        let mut p = v("m", "2026-01-01T00:30:00Z", "1", "1");
        assert!(p.check().is_err());
        p.effective_from -= 30 * 60_000;
        assert!(p.check().is_ok());
        p.currency = "usd".into();
        assert!(p.check().is_err());
    }

    #[test]
    fn the_shipped_price_file_parses() {
        let text = include_str!("../../config/prices.yaml");
        let versions = parse_file(text).unwrap_or_default();
        assert!(versions.len() >= 10, "{}", versions.len());
        let book = PriceBook::new(versions);
        assert!(book.at("gpt-4o-mini", i64::MAX / 2).is_some());
        assert!(parse_file("prices: [{model: m}]").is_err());
    }
}
