//! The JWKS caches, kept across config versions: one entry per (JWKS source, accepted algorithms),
//! holding the parsed keys, the refresh single-flight guard and the time of the last refresh.
//!
//! Every `jwt` filter of every config version that names the same source shares its entry, so a
//! reload (a key change, a new route) does not drop keys fetched from a URL nor reset the refresh rate
//! limit. The registry holds entries weakly: an entry lives as long as a serving filter uses it, and a
//! config that stops naming a source lets it go with the last version that did. The registry's lock is
//! taken only while building, never per request.

use super::jwks::{fetch, parse_jwks, JwksError, KeySet, Lookup, Source, FETCH_TIMEOUT};
use super::revoked::RevokedTokens;
use super::JwtBuildError;
use arc_swap::ArcSwap;
use jsonwebtoken::Algorithm;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::time::Instant;

/// What identifies a cache entry: keys are parsed for the accepted algorithms, so those are part of it.
#[derive(Clone, PartialEq, Eq, Hash)]
enum CacheKey {
    File(PathBuf, Vec<Algorithm>),
    Url(String, Vec<Algorithm>),
}

/// The registry of JWKS entries, one per process (shared by every config version's chains), and the
/// revoked token ids the control plane pushes (process-wide too: a reload must not forget them).
#[derive(Default)]
pub struct JwksCache {
    entries: Mutex<HashMap<CacheKey, Weak<Jwks>>>,
    revoked: Arc<RevokedTokens>,
}

impl std::fmt::Debug for JwksCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.entries.lock().map(|e| e.len()).unwrap_or(0);
        write!(f, "JwksCache({n} sources)")
    }
}

impl JwksCache {
    /// The revoked token ids every `jwt` filter built from this cache refuses.
    pub fn revoked(&self) -> &Arc<RevokedTokens> {
        &self.revoked
    }

    /// The live entry for `key`, or a new one from `make`; forgets entries no version uses any more.
    fn entry(
        &self,
        key: CacheKey,
        make: impl FnOnce() -> Result<Jwks, JwtBuildError>,
    ) -> Result<Arc<Jwks>, JwtBuildError> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.retain(|_, e| e.strong_count() > 0);
        if let Some(live) = entries.get(&key).and_then(Weak::upgrade) {
            return Ok(live);
        }
        let fresh = Arc::new(make()?);
        entries.insert(key, Arc::downgrade(&fresh));
        Ok(fresh)
    }

    /// The entry for a JWKS file, with the file read now: an unreadable or invalid file fails the
    /// build (and so the reload), as it did before the cache; a readable one replaces the cached keys.
    pub(super) fn file(
        &self,
        path: PathBuf,
        algorithms: &[Algorithm],
    ) -> Result<Arc<Jwks>, JwtBuildError> {
        let source = Source::File(path.clone());
        let bytes = std::fs::read(&path).map_err(|error| JwtBuildError::ReadFile {
            what: source.describe(),
            error,
        })?;
        let set = parse_jwks(&bytes, algorithms).map_err(|error| JwtBuildError::Jwks {
            what: source.describe(),
            error,
        })?;
        let key = CacheKey::File(path, algorithms.to_vec());
        let entry = self.entry(key, || Ok(Jwks::new(source, algorithms)))?;
        entry.replace(set);
        Ok(entry)
    }

    /// The entry for a JWKS URL: keys already fetched for it are kept; a new URL is fetched lazily,
    /// on its first token, never while building.
    pub(super) fn url(
        &self,
        url: &str,
        algorithms: &[Algorithm],
    ) -> Result<Arc<Jwks>, JwtBuildError> {
        let key = CacheKey::Url(url.to_string(), algorithms.to_vec());
        self.entry(key, || {
            let client = reqwest::Client::builder()
                .timeout(FETCH_TIMEOUT)
                .connect_timeout(FETCH_TIMEOUT)
                .build()
                .map_err(|error| JwtBuildError::HttpClient {
                    url: url.to_string(),
                    error,
                })?;
            let source = Source::Url {
                url: url.to_string(),
                client,
            };
            Ok(Jwks::new(source, algorithms))
        })
    }
}

/// One JWKS source's keys. A request reads them without a lock (`ArcSwap`); a token whose `kid` is
/// unknown refreshes them, single-flight and rate-limited.
pub(super) struct Jwks {
    source: Source,
    /// The algorithms keys are kept for (part of the cache key).
    algorithms: Vec<Algorithm>,
    keys: ArcSwap<KeySet>,
    /// Single-flight guard for refreshes; holds when the last refresh was attempted.
    last_refresh: tokio::sync::Mutex<Option<Instant>>,
}

impl Jwks {
    fn new(source: Source, algorithms: &[Algorithm]) -> Self {
        Jwks {
            source,
            algorithms: algorithms.to_vec(),
            keys: ArcSwap::from_pointee(KeySet::default()),
            last_refresh: tokio::sync::Mutex::new(None),
        }
    }

    /// Installs `set` as the next generation (a build re-reading its file).
    fn replace(&self, mut set: KeySet) {
        set.generation = self.keys.load().generation + 1;
        self.keys.store(Arc::new(set));
    }

    /// The current key set's generation (changes with every refresh or re-read).
    pub(super) fn generation(&self) -> u64 {
        self.keys.load().generation
    }

    /// The key for (`kid`, `alg`), refreshing the set once if the `kid` is unknown and the last
    /// refresh is at least `min_refresh` old.
    pub(super) async fn find_key(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
        min_refresh: Duration,
    ) -> Lookup {
        let seen = {
            let set = self.keys.load();
            match set.lookup(kid, alg) {
                Lookup::Missing => set.generation,
                other => return other,
            }
        };
        self.refresh(seen, min_refresh).await;
        self.keys.load().lookup(kid, alg)
    }

    /// Reload the key set unless another request already did since generation `seen`, or the last
    /// attempt was less than `min_refresh` ago. Concurrent callers queue on the mutex: one loads, the
    /// others then see the new generation (or the rate limit) and do not load again.
    async fn refresh(&self, seen: u64, min_refresh: Duration) {
        let mut last = self.last_refresh.lock().await;
        let current = self.keys.load().generation;
        if current != seen {
            return;
        }
        let now = Instant::now();
        if let Some(at) = *last {
            if now.saturating_duration_since(at) < min_refresh {
                tracing::debug!(source = %self.source.describe(), "jwt: unknown key id, JWKS refresh rate-limited");
                return;
            }
        }
        *last = Some(now);
        match self.load().await {
            Ok(mut set) => {
                set.generation = current + 1;
                tracing::info!(source = %self.source.describe(), keys = set.all.len(), "jwt: JWKS loaded");
                self.keys.store(Arc::new(set));
            }
            Err(e) => {
                tracing::warn!(source = %self.source.describe(), error = %e, "jwt: JWKS refresh failed; keeping the previous keys");
            }
        }
    }

    async fn load(&self) -> Result<KeySet, JwksError> {
        let bytes = match &self.source {
            Source::File(path) => tokio::fs::read(path).await.map_err(JwksError::Read)?,
            Source::Url { url, client } => fetch(client, url).await?,
        };
        parse_jwks(&bytes, &self.algorithms)
    }
}
