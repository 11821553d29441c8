//! Token signing keys (`identity.signing_keys`): generation, encrypted storage, rotation, the JWKS.
//!
//! A key lives `pending` → `active` → `retired` → deleted. A pending key is **published** (in the
//! JWKS) but does not sign until `activate_at`, at least one JWKS cache lifetime (`publish_ahead`, the
//! JWKS `Cache-Control: max-age`) after it appeared, so every verifier that caches the JWKS knows it
//! before the first token it signs. When it activates, the previous active key of its algorithm
//! retires and stays published until `remove_at` = retirement + the longest token lifetime, when no
//! token it signed is still valid; then [`tick`] deletes it. One active key per algorithm (a unique
//! index); the very first key of an algorithm is active at once (nobody can have cached a JWKS
//! without it).
//!
//! [`tick`] runs every [`TICK_EVERY`] on every admin-api replica and under an advisory lock, so
//! replicas never race a transition; all times come from the injected clock. RSA generation takes a
//! while and runs on the blocking pool.

use chrono::{DateTime, Duration, Utc};
use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use serde::Serialize;
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};

use super::secrets::{random_bytes, MasterKeys, Sealed, Secret};
use super::IdentityError;

/// How often the rotation job looks at the keys.
pub const TICK_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Advisory-lock key of key transitions (one transition at a time across replicas).
const LOCK: i64 = 0x1d3e_0014;

/// A signing algorithm this server has keys for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
pub enum Alg {
    ES256,
    RS256,
    EdDSA,
}

impl Alg {
    pub const ALL: [Alg; 3] = [Alg::ES256, Alg::RS256, Alg::EdDSA];

    pub fn as_str(self) -> &'static str {
        match self {
            Alg::ES256 => "ES256",
            Alg::RS256 => "RS256",
            Alg::EdDSA => "EdDSA",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }

    pub fn jwt(self) -> Algorithm {
        match self {
            Alg::ES256 => Algorithm::ES256,
            Alg::RS256 => Algorithm::RS256,
            Alg::EdDSA => Algorithm::EdDSA,
        }
    }

    /// The encoding key for this algorithm's private key DER (PKCS#8; PKCS#1 for RSA).
    fn encoding_key(self, der: &[u8]) -> EncodingKey {
        match self {
            Alg::ES256 => EncodingKey::from_ec_der(der),
            Alg::RS256 => EncodingKey::from_rsa_der(der),
            Alg::EdDSA => EncodingKey::from_ed_der(der),
        }
    }
}

/// The timing of rotation.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// How long a new key is published before it signs; also the JWKS `max-age`.
    pub publish_ahead: Duration,
    /// How long a key signs before the job creates its successor.
    pub rotate_every: Duration,
    /// The longest token lifetime any client may have: how long a retired key stays published.
    pub max_token_ttl: Duration,
}

/// One key as the admin API shows it (never the private part).
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct KeyInfo {
    pub kid: String,
    #[schema(example = "ES256")]
    pub alg: String,
    /// `pending`, `active` or `retired`.
    #[schema(example = "active")]
    pub state: String,
    pub created_at: DateTime<Utc>,
    pub activate_at: DateTime<Utc>,
    pub activated_at: Option<DateTime<Utc>>,
    pub retired_at: Option<DateTime<Utc>>,
    pub remove_at: Option<DateTime<Utc>>,
}

/// The key a token is signed with.
pub struct Signer {
    pub kid: String,
    pub alg: Alg,
    pub key: EncodingKey,
}

/// A new key pair: the private DER (secret) and the public JWK with its `kid`.
fn generate(alg: Alg) -> Result<(Secret<Vec<u8>>, Jwk), IdentityError> {
    let der = private_der(alg)?;
    let mut jwk = Jwk::from_encoding_key(&alg.encoding_key(der.expose()), alg.jwt())
        .map_err(|e| IdentityError::Internal(format!("public key of a new {alg:?} key: {e}")))?;
    let id = hex::encode(random_bytes::<12>()?);
    jwk.common.key_id = Some(format!("{}-{id}", alg.as_str().to_ascii_lowercase()));
    jwk.common.public_key_use = Some(PublicKeyUse::Signature);
    jwk.common.key_algorithm = Some(match alg {
        Alg::ES256 => KeyAlgorithm::ES256,
        Alg::RS256 => KeyAlgorithm::RS256,
        Alg::EdDSA => KeyAlgorithm::EdDSA,
    });
    Ok((der, jwk))
}

fn private_der(alg: Alg) -> Result<Secret<Vec<u8>>, IdentityError> {
    use rand08::rngs::OsRng;
    let failed = |e: String| IdentityError::Internal(format!("generating a {alg:?} key: {e}"));
    let der = match alg {
        Alg::ES256 => {
            use p256::pkcs8::EncodePrivateKey;
            let key = p256::SecretKey::random(&mut OsRng);
            key.to_pkcs8_der().map_err(|e| failed(e.to_string()))?
        }
        Alg::EdDSA => {
            use ed25519_dalek::pkcs8::{EncodePrivateKey, KeypairBytes};
            // PKCS#8 v1 (seed only): the form `jsonwebtoken` reads.
            let seed = KeypairBytes {
                secret_key: random_bytes::<32>()?,
                public_key: None,
            };
            seed.to_pkcs8_der().map_err(|e| failed(e.to_string()))?
        }
        Alg::RS256 => {
            use rsa::pkcs1::EncodeRsaPrivateKey;
            let key =
                rsa::RsaPrivateKey::new(&mut OsRng, 2048).map_err(|e| failed(e.to_string()))?;
            key.to_pkcs1_der().map_err(|e| failed(e.to_string()))?
        }
    };
    Ok(Secret::new(der.as_bytes().to_vec()))
}

/// Generates a key of `alg` (on the blocking pool: RSA takes a while) and inserts it in `state`.
async fn create(
    conn: &mut PgConnection,
    master: &MasterKeys,
    alg: Alg,
    state: &str,
    now: DateTime<Utc>,
    activate_at: DateTime<Utc>,
) -> Result<String, IdentityError> {
    let (der, jwk) = tokio::task::spawn_blocking(move || generate(alg))
        .await
        .map_err(|e| IdentityError::Internal(format!("key generation task: {e}")))??;
    let kid = jwk.common.key_id.clone().unwrap_or_default();
    let sealed = master.seal(der.expose(), &kid)?;
    sqlx::query(
        "INSERT INTO identity.signing_keys (kid, alg, state, public_jwk, key_version, wrapped_dek,
             ciphertext, created_at, activate_at, activated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, CASE WHEN $3 = 'active' THEN $8 END)",
    )
    .bind(&kid)
    .bind(alg.as_str())
    .bind(state)
    .bind(Json(&jwk))
    .bind(sealed.key_version)
    .bind(&sealed.wrapped_dek)
    .bind(&sealed.ciphertext)
    .bind(now)
    .bind(activate_at)
    .execute(&mut *conn)
    .await?;
    tracing::info!(%kid, alg = alg.as_str(), state, %activate_at, "identity: signing key created");
    Ok(kid)
}

/// What [`tick`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TickReport {
    pub created: Vec<String>,
    pub activated: Vec<String>,
    pub retired: Vec<String>,
    pub removed: Vec<String>,
}

/// Moves every key along its lifecycle as of `now` and creates the keys `algs` need (see the module
/// docs). Safe to run on several replicas at once.
pub async fn tick(
    pool: &PgPool,
    master: &MasterKeys,
    policy: &Policy,
    algs: &[Alg],
    now: DateTime<Utc>,
) -> Result<TickReport, IdentityError> {
    let mut tx = crate::db::begin(pool).await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(LOCK)
        .execute(&mut *tx)
        .await?;
    let removed = sqlx::query_scalar(
        "DELETE FROM identity.signing_keys WHERE state = 'retired' AND remove_at <= $1 RETURNING kid",
    )
    .bind(now)
    .fetch_all(&mut *tx)
    .await?;
    let mut report = TickReport {
        removed,
        ..TickReport::default()
    };
    for alg in algs {
        tick_alg(&mut tx, master, policy, *alg, now, &mut report).await?;
    }
    tx.commit().await?;
    Ok(report)
}

async fn tick_alg(
    conn: &mut PgConnection,
    master: &MasterKeys,
    policy: &Policy,
    alg: Alg,
    now: DateTime<Utc>,
    report: &mut TickReport,
) -> Result<(), IdentityError> {
    promote_due(conn, policy, alg, now, report).await?;
    let (active_since, pending): (Option<DateTime<Utc>>, i64) = sqlx::query_as(
        "SELECT max(activated_at) FILTER (WHERE state = 'active'),
                count(*) FILTER (WHERE state = 'pending')
         FROM identity.signing_keys WHERE alg = $1",
    )
    .bind(alg.as_str())
    .fetch_one(&mut *conn)
    .await?;
    match (active_since, pending) {
        (None, 0) => {
            let kid = create(conn, master, alg, "active", now, now).await?;
            report.created.push(kid);
        }
        (Some(since), 0) if since + policy.rotate_every <= now => {
            let at = now + policy.publish_ahead;
            let kid = create(conn, master, alg, "pending", now, at).await?;
            report.created.push(kid);
        }
        _ => {}
    }
    Ok(())
}

/// Activates `alg`'s pending key whose time has come, retiring the active one.
async fn promote_due(
    conn: &mut PgConnection,
    policy: &Policy,
    alg: Alg,
    now: DateTime<Utc>,
    report: &mut TickReport,
) -> Result<(), IdentityError> {
    let due: Option<String> = sqlx::query_scalar(
        "SELECT kid FROM identity.signing_keys WHERE alg = $1 AND state = 'pending' AND activate_at <= $2
         ORDER BY activate_at DESC LIMIT 1",
    )
    .bind(alg.as_str())
    .bind(now)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(kid) = due else {
        return Ok(());
    };
    let retired: Vec<String> = sqlx::query_scalar(
        "UPDATE identity.signing_keys SET state = 'retired', retired_at = $2, remove_at = $3
         WHERE alg = $1 AND state = 'active' RETURNING kid",
    )
    .bind(alg.as_str())
    .bind(now)
    .bind(now + policy.max_token_ttl)
    .fetch_all(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE identity.signing_keys SET state = 'active', activated_at = $2 WHERE kid = $1",
    )
    .bind(&kid)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    tracing::info!(%kid, ?retired, alg = alg.as_str(), "identity: signing key activated");
    report.retired.extend(retired);
    report.activated.push(kid);
    Ok(())
}

/// Starts a rotation now: a pending key for each of `algs` that has none, signing from
/// `now + publish_ahead`. Returns the pending keys (new or already there).
pub async fn rotate(
    pool: &PgPool,
    master: &MasterKeys,
    policy: &Policy,
    algs: &[Alg],
    now: DateTime<Utc>,
) -> Result<Vec<KeyInfo>, IdentityError> {
    let mut tx = crate::db::begin(pool).await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(LOCK)
        .execute(&mut *tx)
        .await?;
    for alg in algs {
        let pending: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM identity.signing_keys WHERE alg = $1 AND state = 'pending'",
        )
        .bind(alg.as_str())
        .fetch_one(&mut *tx)
        .await?;
        if pending == 0 {
            let at = now + policy.publish_ahead;
            create(&mut tx, master, *alg, "pending", now, at).await?;
        }
    }
    tx.commit().await?;
    Ok(list(pool)
        .await?
        .into_iter()
        .filter(|k| k.state == "pending")
        .collect())
}

/// Every stored key, newest first.
pub async fn list(pool: &PgPool) -> Result<Vec<KeyInfo>, IdentityError> {
    Ok(sqlx::query_as(
        "SELECT kid, alg, state, created_at, activate_at, activated_at, retired_at, remove_at
         FROM identity.signing_keys ORDER BY created_at DESC, kid",
    )
    .fetch_all(pool)
    .await?)
}

/// The published keys: every pending, active and retired key's public JWK.
pub async fn jwks(pool: &PgPool) -> Result<JwkSet, IdentityError> {
    let keys: Vec<Json<Jwk>> = sqlx::query_scalar(
        "SELECT public_jwk FROM identity.signing_keys ORDER BY created_at DESC, kid",
    )
    .fetch_all(pool)
    .await?;
    Ok(JwkSet {
        keys: keys.into_iter().map(|k| k.0).collect(),
    })
}

/// The active key of `alg`, decrypted.
pub async fn signer(pool: &PgPool, master: &MasterKeys, alg: Alg) -> Result<Signer, IdentityError> {
    let row: Option<(String, i32, Vec<u8>, Vec<u8>)> = sqlx::query_as(
        "SELECT kid, key_version, wrapped_dek, ciphertext FROM identity.signing_keys
         WHERE alg = $1 AND state = 'active'",
    )
    .bind(alg.as_str())
    .fetch_optional(pool)
    .await?;
    let (kid, key_version, wrapped_dek, ciphertext) = row.ok_or_else(|| {
        IdentityError::Unavailable(format!("no active {} signing key yet", alg.as_str()))
    })?;
    let sealed = Sealed {
        key_version,
        wrapped_dek,
        ciphertext,
    };
    let der = master.open(&sealed, &kid)?;
    Ok(Signer {
        key: alg.encoding_key(der.expose()),
        kid,
        alg,
    })
}

/// Decrypted signing keys by `kid` (at most one per algorithm: the active one). Keyed by `kid`, so a
/// rotation invalidates by itself: the next issue sees a new active `kid`, decrypts it once and
/// evicts its predecessor. The lock is held only to clone an `Arc`, never across an await.
#[derive(Default)]
pub struct SignerCache {
    by_kid: std::sync::RwLock<std::collections::HashMap<String, std::sync::Arc<Signer>>>,
}

impl SignerCache {
    fn get(&self, kid: &str) -> Option<std::sync::Arc<Signer>> {
        self.by_kid.read().ok()?.get(kid).cloned()
    }

    fn put(&self, signer: std::sync::Arc<Signer>) {
        if let Ok(mut map) = self.by_kid.write() {
            map.retain(|_, s| s.alg != signer.alg);
            map.insert(signer.kid.clone(), signer);
        }
    }

    /// How many decrypted keys are held (for tests).
    pub fn len(&self) -> usize {
        self.by_kid.read().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The active key of `alg`: one indexed lookup of its `kid`, decrypted only the first time that
/// `kid` is seen (then from `cache`).
pub async fn cached_signer(
    pool: &PgPool,
    master: &MasterKeys,
    cache: &SignerCache,
    alg: Alg,
) -> Result<std::sync::Arc<Signer>, IdentityError> {
    let kid: Option<String> = sqlx::query_scalar(
        "SELECT kid FROM identity.signing_keys WHERE alg = $1 AND state = 'active'",
    )
    .bind(alg.as_str())
    .fetch_optional(pool)
    .await?;
    if let Some(hit) = kid.as_deref().and_then(|k| cache.get(k)) {
        return Ok(hit);
    }
    let fresh = std::sync::Arc::new(signer(pool, master, alg).await?);
    cache.put(fresh.clone());
    Ok(fresh)
}

/// The verification key of a published `kid` (for introspection and revocation).
pub async fn decoding_key(
    pool: &PgPool,
    kid: &str,
) -> Result<Option<(Alg, DecodingKey)>, IdentityError> {
    let row: Option<(String, Json<Jwk>)> =
        sqlx::query_as("SELECT alg, public_jwk FROM identity.signing_keys WHERE kid = $1")
            .bind(kid)
            .fetch_optional(pool)
            .await?;
    let Some((alg, jwk)) = row else {
        return Ok(None);
    };
    let alg = Alg::parse(&alg).ok_or_else(|| IdentityError::Internal(format!("alg {alg}")))?;
    let key = DecodingKey::from_jwk(&jwk.0)
        .map_err(|e| IdentityError::Internal(format!("stored JWK {kid}: {e}")))?;
    Ok(Some((alg, key)))
}

/// Re-wraps every signing key's data key under the newest master key; returns how many rows moved.
/// Idempotent (rows already there are not selected) and resumable (each row commits on its own).
pub async fn rewrap_all(pool: &PgPool, master: &MasterKeys) -> Result<u64, IdentityError> {
    rewrap_table(pool, master, "identity.signing_keys", "kid", |kid| {
        kid.to_owned()
    })
    .await
}

/// Re-wraps the data keys of every row of `table` (envelope columns `key_version`, `wrapped_dek`,
/// `ciphertext`, identified by `id_column`; `aad` gives a row's associated data from its id) under
/// the newest master key. Each row is a compare-and-set: it moves only if it still holds what was
/// read (another rewrap may have moved it meanwhile). `table` and `id_column` are constants of the
/// callers, never input.
pub(crate) async fn rewrap_table(
    pool: &PgPool,
    master: &MasterKeys,
    table: &'static str,
    id_column: &'static str,
    aad: impl Fn(&str) -> String,
) -> Result<u64, IdentityError> {
    let rows: Vec<(String, i32, Vec<u8>, Vec<u8>)> = sqlx::query_as(&format!(
        "SELECT {id_column}, key_version, wrapped_dek, ciphertext FROM {table}
         WHERE key_version <> $1 ORDER BY {id_column}"
    ))
    .bind(master.newest())
    .fetch_all(pool)
    .await?;
    let update = format!(
        "UPDATE {table} SET key_version = $2, wrapped_dek = $3
         WHERE {id_column} = $1 AND key_version = $4 AND wrapped_dek = $5"
    );
    let mut moved = 0;
    for (id, key_version, wrapped_dek, ciphertext) in rows {
        let sealed = Sealed {
            key_version,
            wrapped_dek,
            ciphertext,
        };
        let Some(new) = master.rewrap(&sealed, &aad(&id))? else {
            continue;
        };
        let done = sqlx::query(&update)
            .bind(&id)
            .bind(new.key_version)
            .bind(&new.wrapped_dek)
            .bind(sealed.key_version)
            .bind(&sealed.wrapped_dek)
            .execute(pool)
            .await?;
        moved += done.rows_affected();
    }
    Ok(moved)
}
