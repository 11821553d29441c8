//! The config server's engine, one per control-plane process: the version in force (structure and key
//! set) in memory, the publication of new versions, and the fan-out of every version to the watch
//! streams of this process.
//!
//! - **Publishing** (`publish`): under a transaction-scoped advisory lock (one writer across every
//!   replica), catch up with the versions others wrote, read what the other contexts own (tiers and
//!   the key changes since the last version's tenancy revision, through `tenancy::feed`; flags), and
//!   write a new version when something changed: a `snapshot` row for a structural change (validated
//!   first, as `check-config` would), else a `keys` row with the delta. The row's `pg_notify` reaches
//!   every replica at commit.
//! - **Catching up** (`catch_up`): rows newer than the one in memory are applied in order and
//!   broadcast as stream events, whichever replica wrote them.
//! - **Waking up** (`run`): `LISTEN` on `leaky_config_changed` (tenancy and flags write it in their
//!   transactions) and `leaky_config_versions`, and a one-second poll as the fallback, so a lost
//!   notification (a replica restarting, Postgres restarting) delays a change by a second at most.
//! - **Provider credentials**: a base's `${secret:<name>}` references are checked against the vault
//!   (`identity::provider_credentials`) at publication, their revisions are part of the structure's
//!   hash (a changed credential publishes a snapshot), and their values — decrypted with the master
//!   key from the environment, kept in memory only — are substituted into the snapshot lines
//!   streamed to proxies. Postgres keeps only the references.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use sqlx::postgres::PgListener;
use sqlx::{PgConnection, PgPool};
use tokio::sync::broadcast;

use super::render::{self, content_hash, Delta, KeySet, Structure};
use super::store::{self, NewVersion, VersionRow, PUBLISH_LOCK};
use super::ConfigError;
use crate::identity::{provider_credentials, MasterKeys, Secret};
use crate::outbox::{self, CONFIG_TOPIC};
use crate::tenancy::feed::{self, KeyChange};

/// How often each replica re-checks for changes whose notification it missed.
pub const POLL: Duration = Duration::from_secs(1);

/// The version in force, as this process knows it.
pub struct Current {
    pub version: i64,
    pub hash: String,
    pub structure: Arc<Structure>,
    /// The version that set the base in force (its ETag).
    pub base_version: i64,
    pub keys: Arc<KeySet>,
    pub tenancy_revision: i64,
    /// The values of the provider credentials the structure references (memory only, for the lines
    /// streamed to proxies).
    credentials: Arc<Credentials>,
    /// The `snapshot` event line for this version, rendered once, on first demand.
    snapshot: OnceLock<Bytes>,
}

/// Provider credential values by name.
type Credentials = BTreeMap<String, Secret<String>>;

impl Current {
    /// The `snapshot` event of this version (one NDJSON line), rendering it if no one has yet. Rendering
    /// a large key set takes a while: it runs off the async workers.
    pub async fn snapshot_line(self: &Arc<Self>) -> Bytes {
        if let Some(line) = self.snapshot.get() {
            return line.clone();
        }
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let doc = render::resolve(&render::render(&me.structure, &me.keys), &me.credentials);
            me.snapshot
                .get_or_init(|| snapshot_line(me.version, &me.hash, &doc))
                .clone()
        })
        .await
        .unwrap_or_default()
    }
}

fn line(v: &Value) -> Bytes {
    let mut s = v.to_string();
    s.push('\n');
    Bytes::from(s)
}

fn snapshot_line(version: i64, hash: &str, document: &str) -> Bytes {
    line(&json!({ "type": "snapshot", "version": version, "hash": hash, "document": document }))
}

/// One version as the watch streams send it.
#[derive(Debug)]
pub struct Event {
    pub version: i64,
    /// For a key delta: the version it applies to.
    pub base: Option<i64>,
    /// The line to send; none when this process just loaded the version in force (streams waiting
    /// for a first version send its snapshot).
    pub line: Option<Bytes>,
}

/// A request to publish: a new base (`PUT /v1/config/base`, a rollback) or none (pick up what the
/// other contexts changed).
pub struct Publish {
    pub base: Option<String>,
    pub author: String,
    pub reason: String,
    /// The audit action of a change someone asked for (`config.base`, `config.rollback`); the
    /// versions the hub publishes for other contexts' changes are audited by those contexts.
    pub audit: Option<&'static str>,
}

/// The hub: see the module header.
pub struct Hub {
    pool: PgPool,
    current: RwLock<Option<Arc<Current>>>,
    events: broadcast::Sender<Arc<Event>>,
    /// One publication or catch-up at a time in this process.
    busy: tokio::sync::Mutex<()>,
    /// The base imported when there is no version at all yet.
    initial_base: Option<String>,
    /// The master keys provider credentials are opened with (`LEAKY_MASTER_KEY`...); without them
    /// `${secret:...}` references stay unresolved and proxies refuse such versions.
    master: Option<MasterKeys>,
}

impl Hub {
    pub fn new(pool: PgPool, initial_base: Option<String>) -> Arc<Self> {
        let (events, _) = broadcast::channel(256);
        Arc::new(Self {
            pool,
            current: RwLock::new(None),
            events,
            busy: tokio::sync::Mutex::new(()),
            initial_base,
            master: master_from_env(),
        })
    }

    /// The values of `names`, decrypted; on failure (no or wrong master key) none, logged without
    /// any value: the references then reach proxies unresolved and are NACKed.
    async fn credentials<'a>(
        &self,
        conn: &mut PgConnection,
        names: impl Iterator<Item = &'a String>,
    ) -> Arc<Credentials> {
        let names: Vec<&String> = names.collect();
        if names.is_empty() {
            return Arc::default();
        }
        let Some(master) = &self.master else {
            tracing::error!("config server: the base references provider credentials but no master key is configured");
            return Arc::default();
        };
        match provider_credentials::open_all(conn, master, names.into_iter()).await {
            Ok(values) => Arc::new(values),
            Err(e) => {
                tracing::error!(error = %e, "config server: provider credentials could not be opened");
                Arc::default()
            }
        }
    }

    /// The version in force (none before the first one is loaded or published).
    pub fn current(&self) -> Option<Arc<Current>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_current(&self, c: Arc<Current>) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(c);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.events.subscribe()
    }

    /// Keeps the hub current until the process ends; errors (Postgres away) are retried with backoff.
    pub async fn run(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(250);
        loop {
            if let Err(e) = self.follow().await {
                tracing::warn!(error = %e, retry_in = ?backoff, "config server: following changes failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            } else {
                backoff = Duration::from_millis(250);
            }
        }
    }

    async fn follow(&self) -> Result<(), ConfigError> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener
            .listen_all(["leaky_config_changed", "leaky_config_versions"])
            .await?;
        self.sync().await?;
        let mut tick = tokio::time::interval(POLL);
        loop {
            tokio::select! {
                n = listener.recv() => {
                    if n?.channel() == "leaky_config_versions" {
                        self.catch_up().await?;
                    } else {
                        self.sync().await?;
                    }
                }
                _ = tick.tick() => {
                    self.sync().await?;
                }
            }
        }
    }

    /// Catches up, then publishes whatever the other contexts changed.
    pub async fn sync(&self) -> Result<Option<i64>, ConfigError> {
        let published = self
            .publish(Publish {
                base: None,
                author: "config-server".into(),
                reason: "tenancy or flags changed".into(),
                audit: None,
            })
            .await;
        match published {
            // Nothing to merge into yet: the first `PUT /v1/config/base` publishes version 1.
            Err(ConfigError::NoBase) => Ok(None),
            other => other,
        }
    }

    /// Applies the versions other replicas wrote (none needs the lock: rows are immutable).
    pub async fn catch_up(&self) -> Result<(), ConfigError> {
        let _one = self.busy.lock().await;
        let mut conn = self.pool.acquire().await?;
        self.catch_up_on(&mut conn).await.map(|_| ())
    }

    async fn catch_up_on(
        &self,
        conn: &mut PgConnection,
    ) -> Result<Option<Arc<Current>>, ConfigError> {
        let Some(mut cur) = self.current() else {
            return self.load(conn).await;
        };
        for row in store::versions_after(conn, cur.version).await? {
            let credentials = match row.document {
                Some(_) => {
                    let names = secret_names(&row.secrets);
                    self.credentials(conn, names.iter()).await
                }
                None => cur.credentials.clone(),
            };
            let (next, event) = apply_row(&cur, row, credentials)?;
            cur = Arc::new(next);
            // In force first, then announced: a stream that resyncs on the event finds it.
            self.set_current(cur.clone());
            // Nobody listening is fine: streams that open later start from a snapshot.
            let _ = self.events.send(Arc::new(event));
        }
        Ok(Some(cur))
    }

    /// First load: the newest version's structure and hash, and the live keys. Keys may be ahead of the
    /// newest version (changed since); the next publication sends those changes as a delta.
    async fn load(&self, conn: &mut PgConnection) -> Result<Option<Arc<Current>>, ConfigError> {
        let Some((last, snap)) = store::latest(conn).await? else {
            return Ok(None);
        };
        let structure = structure_of(&snap)?;
        let credentials = self.credentials(conn, structure.secrets.keys()).await;
        let keys = KeySet::from_specs(feed::live_keys(conn).await?);
        let cur = Arc::new(Current {
            version: last.version,
            hash: last.hash,
            structure: Arc::new(structure),
            base_version: last.base_version,
            keys: Arc::new(keys),
            tenancy_revision: last.tenancy_revision,
            credentials,
            snapshot: OnceLock::new(),
        });
        self.set_current(cur.clone());
        let _ = self.events.send(Arc::new(Event {
            version: cur.version,
            base: None,
            line: None,
        }));
        Ok(Some(cur))
    }

    /// Publishes a new version if anything changed; returns it (or, for a base equal to the one in
    /// force, the current version; `None` when there is nothing to publish).
    pub async fn publish(&self, req: Publish) -> Result<Option<i64>, ConfigError> {
        let _one = self.busy.lock().await;
        let mut tx = crate::db::begin(&self.pool).await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(PUBLISH_LOCK)
            .execute(&mut *tx)
            .await?;
        let cur = self.catch_up_on(&mut tx).await?;
        let Some(next) = self.prepare(&mut tx, cur.as_deref(), &req).await? else {
            tx.commit().await?;
            return Ok(cur.filter(|_| req.base.is_some()).map(|c| c.version));
        };
        let version = next.version;
        store::insert(&mut tx, next.row(&req)).await?;
        if let Some(action) = req.audit {
            let change = crate::audit::Change {
                actor: &req.author,
                action,
                object_kind: "config",
                object_id: version.to_string(),
                detail: json!({ "reason": req.reason, "hash": next.hash, "kind": next.kind() }),
            };
            crate::audit::record(&mut tx, change).await?;
        }
        // Every published version is a domain event, whatever caused it (a base, a rollback, a key).
        let data = json!({ "version": version, "hash": next.hash, "kind": next.kind(),
                           "reason": req.reason, "author": req.author });
        let event = outbox::Event::on(CONFIG_TOPIC, "config", "config", "config.published", data);
        outbox::append(&mut tx, event).await?;
        tx.commit().await?;
        tracing::info!(version, kind = next.kind(), reason = %req.reason, "config version published");
        let mut conn = self.pool.acquire().await?;
        self.catch_up_on(&mut conn).await?;
        Ok(Some(version))
    }

    /// The structure to publish: the requested base (else the one in force, else the imported one)
    /// with the tiers and flags the other contexts hold now.
    async fn structure_now(
        &self,
        conn: &mut PgConnection,
        cur: Option<&Current>,
        req: &Publish,
    ) -> Result<Structure, ConfigError> {
        let base = req
            .base
            .clone()
            .or_else(|| cur.map(|c| c.structure.base.clone()))
            .or_else(|| self.initial_base.clone())
            .ok_or(ConfigError::NoBase)?;
        let tiers = feed::tiers(conn)
            .await?
            .into_iter()
            .map(|(name, spec)| (name, serde_json::to_value(spec).unwrap_or(Value::Null)))
            .collect();
        let flags: BTreeMap<String, Value> = crate::flags::snapshot(&self.pool)
            .await?
            .into_iter()
            .map(|(name, spec)| (name, serde_json::to_value(spec).unwrap_or(Value::Null)))
            .collect();
        let structure = Structure::new(base, tiers, flags).map_err(ConfigError::Invalid)?;
        // A base sent to the API may hold no literal credential; one already in force (imported
        // from a file, or published before the vault existed) is only checked for its references.
        let refs = structure
            .credential_refs(req.base.is_some())
            .map_err(ConfigError::Invalid)?;
        let revisions = provider_credentials::revisions(conn, &refs).await?;
        let unknown: Vec<String> = refs
            .iter()
            .filter(|n| !revisions.contains_key(*n))
            .map(|n| format!("base.yaml: `${{secret:{n}}}` names no stored provider credential: PUT /v1/provider-credentials/{n} first"))
            .collect();
        if !unknown.is_empty() {
            return Err(ConfigError::Invalid(unknown));
        }
        Ok(structure.with_secrets(revisions))
    }

    /// [`Self::structure_now`]; when no one sent a base and it no longer resolves (a credential it
    /// references was deleted meanwhile), the structure in force, so key changes still go out.
    async fn structure_or_current(
        &self,
        conn: &mut PgConnection,
        cur: Option<&Current>,
        req: &Publish,
    ) -> Result<Structure, ConfigError> {
        match (self.structure_now(conn, cur, req).await, cur) {
            (Err(ConfigError::Invalid(errors)), Some(c)) if req.base.is_none() => {
                tracing::error!(
                    ?errors,
                    "config server: the base in force no longer resolves"
                );
                Ok((*c.structure).clone())
            }
            (other, _) => other,
        }
    }

    /// The next version, or none if nothing changed.
    async fn prepare(
        &self,
        conn: &mut PgConnection,
        cur: Option<&Current>,
        req: &Publish,
    ) -> Result<Option<Next>, ConfigError> {
        let mut structure = self.structure_or_current(conn, cur, req).await?;
        let revision = feed::revision(conn).await?;
        let (delta, keys) = key_delta(conn, cur, revision).await?;
        let mut structural = cur.is_none_or(|c| c.structure.hash != structure.hash);
        if !structural && delta.is_empty() {
            return Ok(None);
        }
        let version = cur.map_or(1, |c| c.version + 1);
        let mut document = None;
        if structural {
            match validated(&structure, &keys, version).await {
                Ok(doc) => document = Some(doc),
                // A change another context made (a tier) cannot be refused any more: keep the
                // structure in force and still push the key changes.
                Err(errors) if req.base.is_none() && cur.is_some() => {
                    tracing::error!(
                        ?errors,
                        "config server: the merged config is invalid; structure not republished"
                    );
                    structure = cur
                        .map(|c| (*c.structure).clone())
                        .ok_or(ConfigError::NoBase)?;
                    structural = false;
                    if delta.is_empty() {
                        return Ok(None);
                    }
                }
                Err(errors) => return Err(ConfigError::Invalid(errors)),
            }
        }
        let digest = hex::encode(keys.digest());
        let hash = content_hash(&structure, &keys.digest());
        let base_version = match cur {
            Some(c) if c.structure.base == structure.base => c.base_version,
            _ => version,
        };
        Ok(Some(Next {
            version,
            base_version,
            structure,
            delta,
            digest,
            hash,
            revision,
            document: document.filter(|_| structural),
        }))
    }
}

/// The version after `cur` from its row, and the event announcing it.
fn apply_row(
    cur: &Current,
    row: VersionRow,
    credentials: Arc<Credentials>,
) -> Result<(Current, Event), ConfigError> {
    let delta: Delta = serde_json::from_value(row.delta).map_err(ConfigError::Corrupt)?;
    let mut keys = (*cur.keys).clone();
    keys.apply(&delta);
    let snapshot = OnceLock::new();
    let (structure, event) = match row.document {
        Some(doc) => {
            let structure = structure_of_parts(row.base, row.tiers, row.flags, row.secrets)?;
            let l = snapshot_line(row.version, &row.hash, &render::resolve(&doc, &credentials));
            let _ = snapshot.set(l.clone());
            (Arc::new(structure), (None, l))
        }
        None => {
            let l = line(&json!({
                "type": "keys", "version": row.version, "base": row.version - 1,
                "hash": row.hash, "upsert": delta.upsert, "remove": delta.remove,
            }));
            (cur.structure.clone(), (Some(row.version - 1), l))
        }
    };
    let event = Event {
        version: row.version,
        base: event.0,
        line: Some(event.1),
    };
    let next = Current {
        version: row.version,
        hash: row.hash,
        structure,
        base_version: row.base_version,
        keys: Arc::new(keys),
        tenancy_revision: row.tenancy_revision,
        credentials,
        snapshot,
    };
    Ok((next, event))
}

/// The key changes since `cur` up to `revision` (every live key for the first version), and the key
/// set after them.
async fn key_delta(
    conn: &mut PgConnection,
    cur: Option<&Current>,
    revision: i64,
) -> Result<(Delta, KeySet), ConfigError> {
    let Some(cur) = cur else {
        let all = feed::live_keys(conn).await?;
        let set = KeySet::from_specs(all.clone());
        return Ok((
            Delta {
                upsert: all,
                remove: Vec::new(),
            },
            set,
        ));
    };
    let mut delta = Delta::default();
    if revision != cur.tenancy_revision {
        for change in feed::key_changes(conn, cur.tenancy_revision, revision).await? {
            match change {
                KeyChange::Upsert(k) => delta.upsert.push(k),
                KeyChange::Remove(id) => delta.remove.push(id),
            }
        }
    }
    let mut keys = (*cur.keys).clone();
    keys.apply(&delta);
    Ok((delta, keys))
}

/// Renders and validates a structural version off the async workers; the document, or every error.
async fn validated(
    structure: &Structure,
    keys: &KeySet,
    version: i64,
) -> Result<Arc<str>, Vec<String>> {
    let (s, k) = (structure.clone(), keys.clone());
    let checked = tokio::task::spawn_blocking(move || {
        let doc = render::render(&s, &k);
        match render::validate(&format!("config v{version}"), &doc) {
            Ok(()) => Ok(doc),
            // The base alone names its own lines: prefer its errors when it is wrong by itself.
            Err(merged) => Err(render::validate("base.yaml", &s.base)
                .err()
                .unwrap_or(merged)),
        }
    })
    .await;
    checked.unwrap_or_else(|e| Err(vec![format!("validation failed: {e}")]))
}

/// A version about to be written.
struct Next {
    version: i64,
    base_version: i64,
    structure: Structure,
    delta: Delta,
    digest: String,
    hash: String,
    revision: i64,
    document: Option<Arc<str>>,
}

impl Next {
    fn kind(&self) -> &'static str {
        if self.document.is_some() {
            "snapshot"
        } else {
            "keys"
        }
    }

    fn row<'a>(&'a self, req: &'a Publish) -> NewVersion<'a> {
        NewVersion {
            version: self.version,
            kind: self.kind(),
            hash: &self.hash,
            base: &self.structure.base,
            base_version: self.base_version,
            tiers: json!(self.structure.tiers),
            flags: json!(self.structure.flags),
            delta: &self.delta,
            keys_digest: &self.digest,
            tenancy_revision: self.revision,
            document: self.document.as_deref(),
            author: &req.author,
            reason: &req.reason,
            secrets: json!(self.structure.secrets),
        }
    }
}

fn structure_of(row: &VersionRow) -> Result<Structure, ConfigError> {
    let (base, tiers, flags) = (row.base.clone(), row.tiers.clone(), row.flags.clone());
    structure_of_parts(base, tiers, flags, row.secrets.clone())
}

fn structure_of_parts(
    base: String,
    tiers: Value,
    flags: Value,
    secrets: Value,
) -> Result<Structure, ConfigError> {
    let tiers = serde_json::from_value(tiers).map_err(ConfigError::Corrupt)?;
    let flags = serde_json::from_value(flags).map_err(ConfigError::Corrupt)?;
    let secrets = serde_json::from_value(secrets).map_err(ConfigError::Corrupt)?;
    let structure = Structure::new(base, tiers, flags).map_err(ConfigError::Invalid)?;
    Ok(structure.with_secrets(secrets))
}

/// The credential names of a stored `secrets` column.
fn secret_names(secrets: &Value) -> Vec<String> {
    secrets
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

/// The master keys as identity reads them (`LEAKY_MASTER_KEY`, `LEAKY_MASTER_KEY_FILE`, or the dev
/// key with `LEAKY_IDENTITY_DEV=1`); none when not configured.
fn master_from_env() -> Option<MasterKeys> {
    let dev = matches!(
        std::env::var("LEAKY_IDENTITY_DEV").as_deref(),
        Ok("1" | "true")
    );
    match MasterKeys::from_env(dev) {
        Ok(m) => Some(m),
        Err(crate::identity::SecretError::NoMasterKey) => None,
        Err(e) => {
            tracing::warn!(error = %e, "config server: provider credentials cannot be resolved");
            None
        }
    }
}
