//! Where the `jwt` filter's keys come from: a JWKS file or URL, parsed into verification keys by `kid`,
//! each limited to the configured algorithms its key type (and curve, and `alg`) can verify.

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyOperations, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Why a JWKS could not be read or used (a refresh that fails this way keeps the previous keys).
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("cannot read: {0}")]
    Read(#[source] std::io::Error),
    #[error("fetch failed: {0}")]
    Fetch(#[source] reqwest::Error),
    #[error("fetch answered {0}")]
    Status(reqwest::StatusCode),
    #[error("fetch failed reading the body: {0}")]
    Body(#[source] reqwest::Error),
    #[error("the JWKS exceeds {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    #[error("invalid JSON: {0}")]
    Json(#[source] serde_json::Error),
    #[error("not a JWKS (no `keys` array)")]
    NotAJwks,
    /// The accepted algorithms, listed.
    #[error("no usable signing key (the accepted algorithms are {0})")]
    NoUsableKey(String),
}

/// A JWKS fetch (connect + response) must finish within this.
pub(super) const FETCH_TIMEOUT: Duration = Duration::from_secs(2);
/// A JWKS larger than this is refused.
pub(super) const MAX_JWKS_BYTES: usize = 1 << 20;

pub(super) const RSA_ALGS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

pub(super) enum Source {
    File(PathBuf),
    Url {
        url: String,
        client: reqwest::Client,
    },
}

impl Source {
    pub(super) fn describe(&self) -> String {
        match self {
            Source::File(p) => format!("JWKS file `{}`", p.display()),
            Source::Url { url, .. } => format!("JWKS URL `{url}`"),
        }
    }
}

/// One verification key and the algorithms (configured ∩ allowed by its type, curve and `alg`) it verifies.
pub(super) struct VerifyKey {
    pub(super) kid: Option<String>,
    pub(super) key: DecodingKey,
    pub(super) algs: Vec<Algorithm>,
}

#[derive(Default)]
pub(super) struct KeySet {
    /// Keys by `kid`; a `kid` may name several keys of different types.
    pub(super) by_kid: HashMap<String, Vec<Arc<VerifyKey>>>,
    /// Every usable key, for tokens without a `kid`.
    pub(super) all: Vec<Arc<VerifyKey>>,
    /// Bumped on every successful load; 0 = never loaded (a URL before its first fetch).
    pub(super) generation: u64,
}

pub(super) enum Lookup {
    Found(Arc<VerifyKey>),
    /// The key exists but does not verify this algorithm.
    WrongAlg,
    Missing,
    /// No `kid` and more than one key.
    Ambiguous,
}

impl KeySet {
    pub(super) fn lookup(&self, kid: Option<&str>, alg: Algorithm) -> Lookup {
        let candidates: &[Arc<VerifyKey>] = match kid {
            Some(kid) => match self.by_kid.get(kid) {
                Some(v) => v,
                None => return Lookup::Missing,
            },
            None => match self.all.len() {
                0 => return Lookup::Missing,
                1 => &self.all,
                _ => return Lookup::Ambiguous,
            },
        };
        match candidates.iter().find(|k| k.algs.contains(&alg)) {
            Some(k) => Lookup::Found(k.clone()),
            None => Lookup::WrongAlg,
        }
    }
}

pub(super) async fn fetch(client: &reqwest::Client, url: &str) -> Result<Vec<u8>, JwksError> {
    let resp = client.get(url).send().await.map_err(JwksError::Fetch)?;
    let status = resp.status();
    if !status.is_success() {
        return Err(JwksError::Status(status));
    }
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
    {
        return Err(JwksError::TooLarge);
    }
    let body = resp.bytes().await.map_err(JwksError::Body)?;
    if body.len() > MAX_JWKS_BYTES {
        return Err(JwksError::TooLarge);
    }
    Ok(body.to_vec())
}

/// Parse a JWKS, keeping the keys that can verify at least one of `allowed`. Keys of other types
/// (symmetric `oct`, encryption keys, unknown curves) are skipped; a set with no usable key is an error,
/// so a bad refresh never replaces working keys with none.
pub(super) fn parse_jwks(bytes: &[u8], allowed: &[Algorithm]) -> Result<KeySet, JwksError> {
    let v: Value = serde_json::from_slice(bytes).map_err(JwksError::Json)?;
    let Some(Value::Array(entries)) = v.get("keys") else {
        return Err(JwksError::NotAJwks);
    };
    let mut set = KeySet::default();
    for (i, entry) in entries.iter().enumerate() {
        let jwk: Jwk = match serde_json::from_value(entry.clone()) {
            Ok(j) => j,
            Err(e) => {
                tracing::debug!(index = i, error = %e, "jwt: skipping an unparsable JWK");
                continue;
            }
        };
        let algs = key_algorithms(&jwk, allowed);
        if algs.is_empty() {
            tracing::debug!(index = i, kid = ?jwk.common.key_id, "jwt: skipping a JWK that verifies no accepted algorithm");
            continue;
        }
        let key = match DecodingKey::from_jwk(&jwk) {
            Ok(k) => k,
            Err(e) => {
                tracing::debug!(index = i, error = %e, "jwt: skipping an unusable JWK");
                continue;
            }
        };
        let k = Arc::new(VerifyKey {
            kid: jwk.common.key_id.clone(),
            key,
            algs,
        });
        if let Some(kid) = &k.kid {
            set.by_kid.entry(kid.clone()).or_default().push(k.clone());
        }
        set.all.push(k);
    }
    if set.all.is_empty() {
        return Err(JwksError::NoUsableKey(
            allowed
                .iter()
                .map(|a| format!("{a:?}"))
                .collect::<Vec<_>>()
                .join(", "),
        ));
    }
    Ok(set)
}

/// The accepted algorithms this JWK may verify: fixed by its type and curve, narrowed by its `alg`,
/// none if it is not a signature key.
pub(super) fn key_algorithms(jwk: &Jwk, allowed: &[Algorithm]) -> Vec<Algorithm> {
    let c = &jwk.common;
    if matches!(&c.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
        return Vec::new();
    }
    if matches!(&c.key_operations, Some(ops) if !ops.contains(&KeyOperations::Verify)) {
        return Vec::new();
    }
    let by_type: &[Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => RSA_ALGS,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => &[Algorithm::ES256],
            EllipticCurve::P384 => &[Algorithm::ES384],
            _ => &[],
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => &[Algorithm::EdDSA],
            _ => &[],
        },
        _ => &[],
    };
    let named = match c.key_algorithm {
        None => None,
        Some(ka) => match Algorithm::try_from(ka) {
            Ok(a) => Some(a),
            Err(_) => return Vec::new(),
        },
    };
    by_type
        .iter()
        .copied()
        .filter(|a| allowed.contains(a) && named.is_none_or(|n| n == *a))
        .collect()
}
