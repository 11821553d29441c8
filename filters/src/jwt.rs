//! `jwt`: authenticate with a bearer JWT verified against a JWKS.
//!
//! - The JWKS comes from a file (read when the config is built: an unreadable or invalid file fails the
//!   reload) or a URL (fetched lazily on the first token, never while building).
//! - Keys are cached by `kid` behind an `ArcSwap`, so a request reads them without a lock. A token whose
//!   `kid` is unknown refreshes the set (file: re-read; URL: fetch), single-flight and at most once per
//!   `min_refresh_interval_seconds`, then the lookup is retried once. A failed refresh keeps the old keys.
//! - Only the configured asymmetric algorithms are accepted, and only with a key of the matching type
//!   (and curve); `none` and HS* never are. `exp` is required; `nbf`, `iss`, `aud` are checked.
//! - Time: jsonwebtoken's own `exp`/`nbf` checks read the system clock, so they are turned off and done
//!   here against `RequestCtx::now_unix` (the request's injected clock). The refresh rate limit uses
//!   `tokio::time::Instant`, which tests drive with `tokio::time::pause`/`advance`.
//!
//! Claims map onto a [`Principal`] through the `claims` names; the model allow-list is enforced in
//! `on_request_body` exactly as `api-key` does.

use crate::api_key::check_model_allowed;
use crate::chain::{BuildContext, Filter, RequestCtx, RequestInfo};
use crate::{AuthMethod, Principal, RejectKind, Rejection};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyOperations, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use leaky_config::{JwtClaimsSpec, JwtSpec, ModelPattern};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// A JWKS fetch (connect + response) must finish within this.
const FETCH_TIMEOUT: Duration = Duration::from_secs(2);
/// A JWKS larger than this is refused.
const MAX_JWKS_BYTES: usize = 1 << 20;

const RSA_ALGS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

enum Source {
    File(PathBuf),
    Url {
        url: String,
        client: reqwest::Client,
    },
}

impl Source {
    fn describe(&self) -> String {
        match self {
            Source::File(p) => format!("JWKS file `{}`", p.display()),
            Source::Url { url, .. } => format!("JWKS URL `{url}`"),
        }
    }
}

/// One verification key and the algorithms (configured ∩ allowed by its type, curve and `alg`) it verifies.
struct VerifyKey {
    kid: Option<String>,
    key: DecodingKey,
    algs: Vec<Algorithm>,
}

#[derive(Default)]
struct KeySet {
    /// Keys by `kid`; a `kid` may name several keys of different types.
    by_kid: HashMap<String, Vec<Arc<VerifyKey>>>,
    /// Every usable key, for tokens without a `kid`.
    all: Vec<Arc<VerifyKey>>,
    /// Bumped on every successful load; 0 = never loaded (a URL before its first fetch).
    generation: u64,
}

enum Lookup {
    Found(Arc<VerifyKey>),
    /// The key exists but does not verify this algorithm.
    WrongAlg,
    Missing,
    /// No `kid` and more than one key.
    Ambiguous,
}

impl KeySet {
    fn lookup(&self, kid: Option<&str>, alg: Algorithm) -> Lookup {
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

pub struct JwtFilter {
    source: Source,
    keys: ArcSwap<KeySet>,
    /// Single-flight guard for refreshes; holds when the last refresh was attempted.
    last_refresh: tokio::sync::Mutex<Option<Instant>>,
    min_refresh: Duration,
    algorithms: Vec<Algorithm>,
    /// One validation per accepted algorithm (jsonwebtoken insists every listed algorithm matches the key's
    /// family, so a multi-family list cannot be shared).
    validations: HashMap<Algorithm, Validation>,
    leeway: i64,
    claims: JwtClaimsSpec,
    default_tier: Option<Arc<str>>,
    optional: bool,
}

impl JwtFilter {
    pub fn from_config(spec: &JwtSpec, cx: &BuildContext) -> Result<Self, String> {
        ensure_crypto_provider();
        let mut algorithms = Vec::with_capacity(spec.algorithms.len());
        for name in &spec.algorithms {
            match Algorithm::from_str(name) {
                Ok(a) if leaky_config::JWT_ALGORITHMS.contains(&name.as_str()) => {
                    if !algorithms.contains(&a) {
                        algorithms.push(a);
                    }
                }
                _ => return Err(format!("jwt: unsupported algorithm `{name}`")),
            }
        }
        if algorithms.is_empty() {
            return Err("jwt: `algorithms` must list at least one algorithm".into());
        }
        let validations = algorithms
            .iter()
            .map(|a| (*a, validation(*a, spec)))
            .collect();

        let (source, keys) = match (&spec.jwks_file, &spec.jwks_url) {
            (Some(file), None) => {
                let path = cx.base_dir.join(file);
                let source = Source::File(path.clone());
                let bytes = std::fs::read(&path)
                    .map_err(|e| format!("jwt: cannot read {}: {e}", source.describe()))?;
                let mut keys = parse_jwks(&bytes, &algorithms)
                    .map_err(|e| format!("jwt: {}: {e}", source.describe()))?;
                keys.generation = 1;
                (source, keys)
            }
            (None, Some(url)) => {
                let client = reqwest::Client::builder()
                    .timeout(FETCH_TIMEOUT)
                    .connect_timeout(FETCH_TIMEOUT)
                    .build()
                    .map_err(|e| format!("jwt: cannot build the HTTP client for `{url}`: {e}"))?;
                (
                    Source::Url {
                        url: url.clone(),
                        client,
                    },
                    KeySet::default(),
                )
            }
            _ => return Err("jwt: needs exactly one of `jwks_file` or `jwks_url`".into()),
        };

        Ok(JwtFilter {
            source,
            keys: ArcSwap::from_pointee(keys),
            last_refresh: tokio::sync::Mutex::new(None),
            min_refresh: Duration::from_secs(spec.min_refresh_interval_seconds),
            algorithms,
            validations,
            leeway: i64::try_from(spec.leeway_seconds).unwrap_or(i64::MAX),
            claims: spec.claims.clone(),
            default_tier: spec.default_tier.as_deref().map(Arc::from),
            optional: spec.optional,
        })
    }

    /// Verify `token` and map its claims; `now` is unix seconds.
    async fn authenticate(&self, token: &str, now: i64) -> Result<Principal, Rejection> {
        let header = parse_header(token)?;
        let alg = match Algorithm::from_str(&header.alg) {
            Ok(a) if self.algorithms.contains(&a) => a,
            _ => {
                let accepted: Vec<String> =
                    self.algorithms.iter().map(|a| format!("{a:?}")).collect();
                return Err(unauthenticated(format!(
                    "The token's signing algorithm{} is not allowed (accepted: {}).",
                    shown(&header.alg)
                        .map(|a| format!(" `{a}`"))
                        .unwrap_or_default(),
                    accepted.join(", ")
                )));
            }
        };
        let key = self.find_key(header.kid.as_deref(), alg).await?;
        let Some(validation) = self.validations.get(&alg) else {
            return Err(unauthenticated(
                "The token's signing algorithm is not allowed.",
            ));
        };
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, validation)
            .map_err(|e| verification_error(e.kind(), key.kid.as_deref()))?;
        check_times(&data.claims, now, self.leeway)?;
        self.principal(&data.claims)
    }

    /// The key for (`kid`, `alg`), refreshing the set once if the `kid` is unknown.
    async fn find_key(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Arc<VerifyKey>, Rejection> {
        let seen = {
            let set = self.keys.load();
            match set.lookup(kid, alg) {
                Lookup::Missing => set.generation,
                other => return lookup_result(other, kid, alg),
            }
        };
        self.refresh(seen).await;
        lookup_result(self.keys.load().lookup(kid, alg), kid, alg)
    }

    /// Reload the key set unless another request already did since generation `seen`, or the last
    /// attempt was less than `min_refresh` ago. Concurrent callers queue on the mutex: one loads, the
    /// others then see the new generation (or the rate limit) and do not load again.
    async fn refresh(&self, seen: u64) {
        let mut last = self.last_refresh.lock().await;
        let current = self.keys.load().generation;
        if current != seen {
            return;
        }
        let now = Instant::now();
        if let Some(at) = *last {
            if now.saturating_duration_since(at) < self.min_refresh {
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

    async fn load(&self) -> Result<KeySet, String> {
        let bytes = match &self.source {
            Source::File(path) => tokio::fs::read(path)
                .await
                .map_err(|e| format!("cannot read: {e}"))?,
            Source::Url { url, client } => fetch(client, url).await?,
        };
        parse_jwks(&bytes, &self.algorithms)
    }

    fn principal(&self, c: &Map<String, Value>) -> Result<Principal, Rejection> {
        let names = &self.claims;
        let user = match c.get(&names.user) {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => {
                return Err(unauthenticated(format!(
                    "The token has no `{}` claim (the user).",
                    names.user
                )))
            }
        };
        let org = optional_string(c, &names.org)?;
        let tier = match optional_string(c, &names.tier)? {
            Some(t) => t,
            None => match &self.default_tier {
                Some(t) => t.clone(),
                None => {
                    return Err(unauthenticated(format!(
                        "The token carries no tier (no `{}` claim and no default tier).",
                        names.tier
                    )))
                }
            },
        };
        let roles = string_list(c, &names.roles)?.unwrap_or_default();
        let models: Vec<ModelPattern> = match string_list(c, &names.models)? {
            None => Vec::new(),
            // An explicit empty list allows no model; an empty `models` on a principal would allow all, so
            // use a pattern no model name matches.
            Some(list) if list.is_empty() => vec![ModelPattern::Exact(String::new())],
            Some(list) => list.iter().map(|m| ModelPattern::parse(m)).collect(),
        };
        let id = match c.get("jti") {
            Some(Value::String(j)) if !j.is_empty() => j.clone(),
            _ => user.clone(),
        };
        Ok(Principal {
            id: id.into(),
            user: user.into(),
            org,
            tier,
            roles: roles.into(),
            models: models.into(),
            method: AuthMethod::Jwt,
        })
    }
}

#[async_trait]
impl Filter for JwtFilter {
    fn kind(&self) -> &'static str {
        "jwt"
    }

    async fn on_request(
        &self,
        req: &RequestInfo<'_>,
        ctx: &mut RequestCtx,
    ) -> Result<(), Rejection> {
        if ctx.principal.is_some() {
            return Ok(());
        }
        let token = match bearer(req) {
            Some(t) if jwt_shaped(t) => t,
            other => {
                if self.optional {
                    return Ok(());
                }
                return Err(unauthenticated(match other {
                    None => {
                        "You didn't provide a token. Send a JWT as `Authorization: Bearer <token>`."
                    }
                    Some(_) => "The bearer token is not a JWT.",
                }));
            }
        };
        match self.authenticate(token, ctx.now_unix).await {
            Ok(p) => {
                ctx.principal = Some(Arc::new(p));
                Ok(())
            }
            Err(r) => {
                tracing::debug!(reason = %r.message, "jwt: token refused");
                Err(r)
            }
        }
    }

    fn on_request_body(&self, _body: &[u8], ctx: &mut RequestCtx) -> Result<(), Rejection> {
        check_model_allowed(ctx)
    }
}

/// jsonwebtoken 11 selects its crypto backend from crate features on first use and panics at
/// verification time if it cannot (neither or both backends enabled by feature unification). Install the
/// RustCrypto backend explicitly; `Err` only means a provider is already installed.
fn ensure_crypto_provider() {
    let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
}

fn validation(alg: Algorithm, spec: &JwtSpec) -> Validation {
    let mut v = Validation::new(alg);
    // exp/nbf are checked in `check_times` against the request's clock; jsonwebtoken reads the system clock.
    v.validate_exp = false;
    v.validate_nbf = false;
    v.leeway = 0;
    let mut required = vec!["exp"];
    if let Some(iss) = &spec.issuer {
        v.set_issuer(&[iss]);
        required.push("iss");
    }
    if spec.audiences.is_empty() {
        v.validate_aud = false;
    } else {
        v.set_audience(&spec.audiences);
        required.push("aud");
    }
    v.set_required_spec_claims(&required);
    v
}

fn unauthenticated(message: impl Into<String>) -> Rejection {
    Rejection::new(RejectKind::Unauthenticated, message)
}

/// `s` if it is short, printable and safe to quote in a message (header values are caller-controlled).
fn shown(s: &str) -> Option<&str> {
    (!s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_graphic() && b != b'`'))
        .then_some(s)
}

fn lookup_result(
    l: Lookup,
    kid: Option<&str>,
    alg: Algorithm,
) -> Result<Arc<VerifyKey>, Rejection> {
    let kid_txt = kid
        .and_then(shown)
        .map(|k| format!(" `{k}`"))
        .unwrap_or_default();
    match l {
        Lookup::Found(k) => Ok(k),
        Lookup::WrongAlg => Err(unauthenticated(format!(
            "The token's algorithm `{alg:?}` is not allowed for its key{kid_txt}."
        ))),
        Lookup::Missing if kid.is_none() => Err(unauthenticated(
            "The token has no key id (kid) and no key is available.",
        )),
        Lookup::Missing => Err(unauthenticated(format!(
            "The token's key id (kid){kid_txt} is unknown."
        ))),
        Lookup::Ambiguous => Err(unauthenticated(
            "The token has no key id (kid) and the key set holds more than one key.",
        )),
    }
}

fn verification_error(kind: &ErrorKind, kid: Option<&str>) -> Rejection {
    match kind {
        ErrorKind::InvalidSignature => unauthenticated("The token's signature is invalid."),
        ErrorKind::InvalidIssuer => unauthenticated("The token's issuer (iss) is not accepted."),
        ErrorKind::InvalidAudience => {
            unauthenticated("The token's audience (aud) is not accepted.")
        }
        ErrorKind::MissingRequiredClaim(c) => {
            unauthenticated(format!("The token has no `{c}` claim."))
        }
        ErrorKind::InvalidClaimFormat(c) => {
            unauthenticated(format!("The token's `{c}` claim is malformed."))
        }
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::UnsupportedAlgorithm => {
            unauthenticated("The token's signing algorithm is not allowed.")
        }
        ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat => {
            tracing::warn!(kid = kid.unwrap_or("-"), error = ?kind, "jwt: a JWKS key cannot verify tokens");
            unauthenticated("The token's signature could not be verified with its key.")
        }
        _ => unauthenticated("The token is malformed."),
    }
}

/// `exp` (required) and `nbf` (if present) against `now`, with `leeway` seconds of skew.
fn check_times(c: &Map<String, Value>, now: i64, leeway: i64) -> Result<(), Rejection> {
    let Some(exp) = c.get("exp").and_then(numeric) else {
        return Err(unauthenticated("The token has no valid `exp` claim."));
    };
    if now >= exp.saturating_add(leeway) {
        return Err(unauthenticated("The token has expired."));
    }
    match c.get("nbf") {
        None | Some(Value::Null) => {}
        Some(v) => match numeric(v) {
            Some(nbf) if now.saturating_add(leeway) < nbf => {
                return Err(unauthenticated(
                    "The token is not valid yet (its `nbf` is in the future).",
                ))
            }
            Some(_) => {}
            None => return Err(unauthenticated("The token's `nbf` claim is malformed.")),
        },
    }
    Ok(())
}

fn numeric(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64)),
        _ => None,
    }
}

/// A string claim; absent, null or empty is `None`, another type is refused.
fn optional_string(c: &Map<String, Value>, name: &str) -> Result<Option<Arc<str>>, Rejection> {
    match c.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(Arc::from(s.as_str()))),
        Some(_) => Err(unauthenticated(format!(
            "The token's `{name}` claim must be a string."
        ))),
    }
}

/// An array of strings or a space-separated string; `None` when absent or null.
fn string_list(c: &Map<String, Value>, name: &str) -> Result<Option<Vec<String>>, Rejection> {
    let bad = || {
        unauthenticated(format!(
            "The token's `{name}` claim must be a list of strings."
        ))
    };
    match c.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.split_whitespace().map(str::to_string).collect())),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(str::to_string).ok_or_else(bad))
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(bad()),
    }
}

/// The `Authorization: Bearer` value; `Some("")` when it is there but not text.
fn bearer<'a>(req: &'a RequestInfo<'_>) -> Option<&'a str> {
    let v = req.headers.get(http::header::AUTHORIZATION)?.as_bytes();
    if v.len() <= 7 || !v[..7].eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let t = v[7..].trim_ascii();
    if t.is_empty() {
        return None;
    }
    Some(std::str::from_utf8(t).unwrap_or(""))
}

fn is_b64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// Three dot-separated base64url segments (the signature may be empty, as in an `alg: none` token, which
/// is then refused rather than passed on).
fn jwt_shaped(t: &str) -> bool {
    let mut parts = t.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(p), Some(s), None) => {
            !h.is_empty() && !p.is_empty() && [h, p, s].iter().all(|x| x.bytes().all(is_b64url))
        }
        _ => false,
    }
}

fn b64url_decode(s: &str) -> Option<Vec<u8>> {
    if s.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

struct JoseHeader {
    alg: String,
    kid: Option<String>,
}

/// The header's `alg` and `kid`, read before verification to pick the key (and to name a refused `alg`,
/// which jsonwebtoken cannot even parse when it is `none`).
fn parse_header(token: &str) -> Result<JoseHeader, Rejection> {
    let malformed = || unauthenticated("The token header is malformed.");
    let seg = token.split('.').next().ok_or_else(malformed)?;
    let bytes = b64url_decode(seg).ok_or_else(malformed)?;
    let Ok(Value::Object(h)) = serde_json::from_slice::<Value>(&bytes) else {
        return Err(malformed());
    };
    let Some(Value::String(alg)) = h.get("alg") else {
        return Err(malformed());
    };
    let kid = match h.get("kid") {
        None | Some(Value::Null) => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(malformed()),
    };
    if h.contains_key("crit") {
        return Err(unauthenticated(
            "The token uses critical header extensions (crit), which are not supported.",
        ));
    }
    Ok(JoseHeader {
        alg: alg.clone(),
        kid,
    })
}

async fn fetch(client: &reqwest::Client, url: &str) -> Result<Vec<u8>, String> {
    let resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("fetch failed: {e}"))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(format!("fetch answered {status}"));
    }
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
    {
        return Err(format!("the JWKS exceeds {MAX_JWKS_BYTES} bytes"));
    }
    let body = resp
        .bytes()
        .await
        .map_err(|e| format!("fetch failed reading the body: {e}"))?;
    if body.len() > MAX_JWKS_BYTES {
        return Err(format!("the JWKS exceeds {MAX_JWKS_BYTES} bytes"));
    }
    Ok(body.to_vec())
}

/// Parse a JWKS, keeping the keys that can verify at least one of `allowed`. Keys of other types
/// (symmetric `oct`, encryption keys, unknown curves) are skipped; a set with no usable key is an error,
/// so a bad refresh never replaces working keys with none.
fn parse_jwks(bytes: &[u8], allowed: &[Algorithm]) -> Result<KeySet, String> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("invalid JSON: {e}"))?;
    let Some(Value::Array(entries)) = v.get("keys") else {
        return Err("not a JWKS (no `keys` array)".into());
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
        return Err(format!(
            "no usable signing key (the accepted algorithms are {})",
            allowed
                .iter()
                .map(|a| format!("{a:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(set)
}

/// The accepted algorithms this JWK may verify: fixed by its type and curve, narrowed by its `alg`,
/// none if it is not a signature key.
fn key_algorithms(jwk: &Jwk, allowed: &[Algorithm]) -> Vec<Algorithm> {
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::KeyIndex;
    use axum::extract::State;
    use axum::http::StatusCode;
    use http::{HeaderMap, Method};
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;
    use std::path::Path;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const NOW: i64 = 1_700_000_000;
    const ISS: &str = "https://idp.example";
    const AUD: &str = "leaky";

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jwt")
    }

    fn pem(name: &str) -> Vec<u8> {
        std::fs::read(fixtures().join(name)).unwrap()
    }

    fn rsa() -> EncodingKey {
        EncodingKey::from_rsa_pem(&pem("rsa.pem")).unwrap()
    }

    fn ec() -> EncodingKey {
        EncodingKey::from_ec_pem(&pem("ec.pem")).unwrap()
    }

    fn ed() -> EncodingKey {
        EncodingKey::from_ed_pem(&pem("ed25519.pem")).unwrap()
    }

    /// A JWKS with fixture keys picked by their fixture `kid` and published under a new one.
    fn jwks(keys: &[(&str, &str)]) -> Value {
        let all: Value = serde_json::from_slice(&pem("jwks.json")).unwrap();
        let keys: Vec<Value> = keys
            .iter()
            .map(|(src, kid)| {
                let mut k = all["keys"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|k| k["kid"] == *src)
                    .unwrap()
                    .clone();
                k["kid"] = json!(kid);
                k
            })
            .collect();
        json!({ "keys": keys })
    }

    fn spec() -> JwtSpec {
        JwtSpec {
            jwks_file: Some("jwks.json".into()),
            jwks_url: None,
            algorithms: vec!["RS256".into(), "ES256".into(), "EdDSA".into()],
            issuer: Some(ISS.into()),
            audiences: vec![AUD.into(), "other-aud".into()],
            leeway_seconds: 30,
            min_refresh_interval_seconds: 10,
            claims: JwtClaimsSpec::default(),
            default_tier: None,
            optional: false,
        }
    }

    fn url_spec(url: &str, min_refresh: u64) -> JwtSpec {
        JwtSpec {
            jwks_file: None,
            jwks_url: Some(url.into()),
            min_refresh_interval_seconds: min_refresh,
            ..spec()
        }
    }

    fn cx(dir: &Path) -> BuildContext {
        BuildContext {
            keys: Arc::new(KeyIndex::new(&[])),
            base_dir: dir.to_path_buf(),
        }
    }

    fn build(spec: &JwtSpec) -> JwtFilter {
        JwtFilter::from_config(spec, &cx(&fixtures())).unwrap()
    }

    fn claims() -> Value {
        json!({
            "sub": "alice", "org": "acme", "tier": "pro", "roles": ["admin", "dev"],
            "models": ["gpt-*", "qwen-plus"], "iss": ISS, "aud": AUD,
            "exp": NOW + 3600, "iat": NOW, "jti": "tok-1",
        })
    }

    /// `claims()` with `changes` merged in; a null value removes the claim.
    fn claims_with(changes: Value) -> Value {
        let mut c = claims();
        for (k, v) in changes.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    }

    fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
        let mut h = Header::new(alg);
        h.kid = kid.map(str::to_string);
        encode(&h, claims, key).unwrap()
    }

    fn rs(claims: &Value) -> String {
        sign(Algorithm::RS256, Some("rsa-1"), &rsa(), claims)
    }

    fn b64url(bytes: &[u8]) -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
            for i in 0..=chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }

    async fn run_at(
        f: &JwtFilter,
        auth: Option<&str>,
        now: i64,
    ) -> (Result<(), Rejection>, RequestCtx) {
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            h.insert(http::header::AUTHORIZATION, a.parse().unwrap());
        }
        let req = RequestInfo {
            method: &Method::POST,
            path: "/v1/chat/completions",
            query: None,
            headers: &h,
        };
        let mut ctx = RequestCtx {
            now_unix: now,
            ..Default::default()
        };
        let r = f.on_request(&req, &mut ctx).await;
        (r, ctx)
    }

    async fn run(f: &JwtFilter, token: &str) -> (Result<(), Rejection>, RequestCtx) {
        run_at(f, Some(&format!("Bearer {token}")), NOW).await
    }

    async fn principal(f: &JwtFilter, token: &str) -> Arc<Principal> {
        let (r, ctx) = run(f, token).await;
        assert!(r.is_ok(), "refused: {r:?}");
        ctx.principal.unwrap()
    }

    /// The 401 message, after checking it is a 401 that does not echo the token.
    async fn refused(f: &JwtFilter, token: &str) -> String {
        let (r, ctx) = run(f, token).await;
        assert!(ctx.principal.is_none());
        let e = r.expect_err("token was accepted");
        assert_eq!((e.kind, e.status()), (RejectKind::Unauthenticated, 401));
        for part in token.split('.').filter(|p| p.len() > 8) {
            assert!(
                !e.message.contains(part),
                "message echoes the token: {}",
                e.message
            );
        }
        e.message
    }

    #[tokio::test]
    async fn valid_rs256_es256_eddsa_tokens_produce_the_principal() {
        let f = build(&spec());
        for token in [
            rs(&claims()),
            sign(Algorithm::ES256, Some("ec-1"), &ec(), &claims()),
            sign(Algorithm::EdDSA, Some("ed-1"), &ed(), &claims()),
        ] {
            let p = principal(&f, &token).await;
            assert_eq!(&*p.id, "tok-1");
            assert_eq!(&*p.user, "alice");
            assert_eq!(p.org.as_deref(), Some("acme"));
            assert_eq!(&*p.tier, "pro");
            assert_eq!(&*p.roles, ["admin".to_string(), "dev".to_string()]);
            assert_eq!(
                &*p.models,
                [
                    ModelPattern::parse("gpt-*"),
                    ModelPattern::parse("qwen-plus")
                ]
            );
            assert_eq!(p.method, AuthMethod::Jwt);
        }
    }

    #[tokio::test]
    async fn claim_names_are_mapped_and_optional_claims_default() {
        let mut s = spec();
        s.claims = JwtClaimsSpec {
            user: "email".into(),
            org: "tenant".into(),
            tier: "plan".into(),
            roles: "scope".into(),
            models: "allowed_models".into(),
        };
        let f = build(&s);
        let c = json!({"sub": "ignored", "email": "bob@example.com", "plan": "free", "scope": "read  write",
                       "iss": ISS, "aud": [AUD], "exp": NOW + 60});
        let p = principal(&f, &rs(&c)).await;
        assert_eq!(
            (&*p.id, &*p.user, &*p.tier),
            ("bob@example.com", "bob@example.com", "free")
        );
        assert_eq!(p.org, None);
        assert_eq!(&*p.roles, ["read".to_string(), "write".to_string()]);
        assert!(p.models.is_empty() && p.may_use("anything"));

        // an explicit empty allow-list allows no model
        let mut c2 = c.clone();
        c2["allowed_models"] = json!([]);
        let p = principal(&f, &rs(&c2)).await;
        assert!(!p.may_use("gpt-4o"));

        // the user claim is required; malformed roles are refused
        assert!(refused(
            &f,
            &rs(&json!({"sub": "x", "plan": "free", "iss": ISS, "aud": AUD, "exp": NOW + 60}))
        )
        .await
        .contains("`email`"));
        c2["scope"] = json!([1, 2]);
        assert!(refused(&f, &rs(&c2)).await.contains("`scope`"));
    }

    #[tokio::test]
    async fn expiry_and_not_before_use_the_request_clock_with_leeway() {
        let f = build(&spec());
        assert!(refused(&f, &rs(&claims_with(json!({"exp": NOW - 31}))))
            .await
            .contains("expired"));
        principal(&f, &rs(&claims_with(json!({"exp": NOW - 29})))).await; // within the 30 s leeway
        assert!(refused(&f, &rs(&claims_with(json!({"exp": null}))))
            .await
            .contains("`exp`"));
        assert!(refused(&f, &rs(&claims_with(json!({"nbf": NOW + 100}))))
            .await
            .contains("not valid yet"));
        principal(&f, &rs(&claims_with(json!({"nbf": NOW + 20})))).await;

        // the same token is valid or expired depending only on ctx.now_unix
        let t = rs(&claims());
        assert!(run_at(&f, Some(&format!("Bearer {t}")), NOW + 3000)
            .await
            .0
            .is_ok());
        assert!(run_at(&f, Some(&format!("Bearer {t}")), NOW + 3700)
            .await
            .0
            .is_err());
    }

    #[tokio::test]
    async fn issuer_and_audience_are_checked() {
        let f = build(&spec());
        assert!(refused(
            &f,
            &rs(&claims_with(json!({"iss": "https://evil.example"})))
        )
        .await
        .contains("issuer"));
        assert!(refused(&f, &rs(&claims_with(json!({"iss": null}))))
            .await
            .contains("`iss`"));
        assert!(
            refused(&f, &rs(&claims_with(json!({"aud": "someone-else"}))))
                .await
                .contains("audience")
        );
        assert!(refused(&f, &rs(&claims_with(json!({"aud": null}))))
            .await
            .contains("`aud`"));
        principal(&f, &rs(&claims_with(json!({"aud": ["x", "other-aud"]})))).await;

        // no issuer / audiences configured: neither is checked
        let mut s = spec();
        s.issuer = None;
        s.audiences = vec![];
        let f = build(&s);
        principal(
            &f,
            &rs(&claims_with(json!({"iss": "anyone", "aud": "anything"}))),
        )
        .await;
    }

    #[tokio::test]
    async fn only_configured_algorithms_matching_the_key_are_accepted() {
        let mut s = spec();
        s.algorithms = vec!["RS256".into()];
        let f = build(&s);
        principal(&f, &rs(&claims())).await;
        let es = sign(Algorithm::ES256, Some("ec-1"), &ec(), &claims());
        assert!(refused(&f, &es)
            .await
            .contains("algorithm `ES256` is not allowed"));

        let f = build(&spec());
        // HS256 signed with some secret, claiming the RSA key
        let hs = sign(
            Algorithm::HS256,
            Some("rsa-1"),
            &EncodingKey::from_secret(b"secret"),
            &claims(),
        );
        assert!(refused(&f, &hs)
            .await
            .contains("algorithm `HS256` is not allowed"));
        // alg: none
        let none = format!(
            "{}.{}.",
            b64url(br#"{"alg":"none","typ":"JWT","kid":"rsa-1"}"#),
            b64url(claims().to_string().as_bytes())
        );
        assert!(refused(&f, &none)
            .await
            .contains("algorithm `none` is not allowed"));
        // an accepted algorithm, but not the key's type (RS256 header on the EC key's kid)
        let mixed = sign(Algorithm::RS256, Some("ec-1"), &rsa(), &claims());
        assert!(refused(&f, &mixed)
            .await
            .contains("not allowed for its key"));
        // RS384 is RSA but the JWK pins alg RS256
        let mut s = spec();
        s.algorithms.push("RS384".into());
        let f = build(&s);
        let rs384 = sign(Algorithm::RS384, Some("rsa-1"), &rsa(), &claims());
        assert!(refused(&f, &rs384)
            .await
            .contains("not allowed for its key"));

        // HS* cannot even be configured
        let mut s = spec();
        s.algorithms = vec!["HS256".into()];
        assert!(JwtFilter::from_config(&s, &cx(&fixtures())).is_err());
    }

    #[tokio::test]
    async fn tampered_tokens_are_refused() {
        let f = build(&spec());
        for token in [
            rs(&claims()),
            sign(Algorithm::ES256, Some("ec-1"), &ec(), &claims()),
        ] {
            let parts: Vec<&str> = token.split('.').collect();
            let mut sig: Vec<u8> = parts[2].bytes().collect();
            let mid = sig.len() / 2;
            sig[mid] = if sig[mid] == b'A' { b'B' } else { b'A' };
            let bad_sig = format!(
                "{}.{}.{}",
                parts[0],
                parts[1],
                String::from_utf8(sig).unwrap()
            );
            assert!(refused(&f, &bad_sig).await.contains("signature is invalid"));

            let forged = b64url(
                claims_with(json!({"tier": "enterprise"}))
                    .to_string()
                    .as_bytes(),
            );
            let bad_payload = format!("{}.{}.{}", parts[0], forged, parts[2]);
            assert!(refused(&f, &bad_payload)
                .await
                .contains("signature is invalid"));
        }
        // signed by a key the set does not hold, under a known kid
        let other = sign(Algorithm::EdDSA, Some("ec-1"), &ed(), &claims());
        assert!(refused(&f, &other)
            .await
            .contains("not allowed for its key"));
    }

    #[tokio::test]
    async fn tier_comes_from_the_claim_or_the_default() {
        let no_tier = rs(&claims_with(json!({"tier": null})));
        assert!(refused(&build(&spec()), &no_tier)
            .await
            .contains("carries no tier"));
        let mut s = spec();
        s.default_tier = Some("free".into());
        let f = build(&s);
        assert_eq!(&*principal(&f, &no_tier).await.tier, "free");
        assert_eq!(&*principal(&f, &rs(&claims())).await.tier, "pro");
    }

    #[tokio::test]
    async fn missing_or_non_jwt_bearer() {
        let f = build(&spec());
        let (r, _) = run_at(&f, None, NOW).await;
        assert!(r.unwrap_err().message.contains("didn't provide a token"));
        let (r, _) = run_at(&f, Some("Bearer lt-abc123"), NOW).await;
        assert_eq!(r.unwrap_err().message, "The bearer token is not a JWT.");
        let (r, _) = run_at(&f, Some("Basic dXNlcjpwYXNz"), NOW).await;
        assert_eq!(r.unwrap_err().kind, RejectKind::Unauthenticated);

        let mut s = spec();
        s.optional = true;
        let f = build(&s);
        for auth in [None, Some("Bearer lt-abc123"), Some("Bearer a.b.c.d")] {
            let (r, ctx) = run_at(&f, auth, NOW).await;
            assert!(r.is_ok() && ctx.principal.is_none(), "{auth:?}");
        }
        // optional does not excuse a JWT that fails verification
        assert!(refused(&f, &rs(&claims_with(json!({"exp": NOW - 100}))))
            .await
            .contains("expired"));
        // bearer prefix is case-insensitive
        let t = rs(&claims());
        assert!(run_at(&f, Some(&format!("bearer  {t} ")), NOW)
            .await
            .1
            .principal
            .is_some());
    }

    #[tokio::test]
    async fn an_existing_principal_passes_through() {
        let f = build(&spec());
        let mut h = HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            "Bearer garbage".parse().unwrap(),
        );
        let req = RequestInfo {
            method: &Method::POST,
            path: "/",
            query: None,
            headers: &h,
        };
        let p = Arc::new(Principal {
            id: "k".into(),
            user: "u".into(),
            org: None,
            tier: "t".into(),
            roles: Arc::new([]),
            models: Arc::new([]),
            method: AuthMethod::ApiKey,
        });
        let mut ctx = RequestCtx {
            principal: Some(p.clone()),
            now_unix: NOW,
            ..Default::default()
        };
        assert!(f.on_request(&req, &mut ctx).await.is_ok());
        assert_eq!(ctx.principal, Some(p));
    }

    #[tokio::test]
    async fn token_without_kid_needs_a_single_key() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("one.json"),
            jwks(&[("ed-1", "ed-1")]).to_string(),
        )
        .unwrap();
        let f = JwtFilter::from_config(
            &JwtSpec {
                jwks_file: Some("one.json".into()),
                ..spec()
            },
            &cx(dir.path()),
        )
        .unwrap();
        let t = sign(Algorithm::EdDSA, None, &ed(), &claims());
        assert_eq!(&*principal(&f, &t).await.user, "alice");

        let f = build(&spec());
        assert!(refused(&f, &t).await.contains("more than one key"));
    }

    #[tokio::test]
    async fn model_allow_list_is_enforced_on_the_body() {
        let f = build(&spec());
        let (r, mut ctx) = run(&f, &rs(&claims())).await;
        assert!(r.is_ok());
        ctx.model = Some("gpt-4o".into());
        assert!(f.on_request_body(b"", &mut ctx).is_ok());
        ctx.model = Some("claude-3".into());
        let e = f.on_request_body(b"", &mut ctx).unwrap_err();
        assert_eq!(
            (e.kind, e.param),
            (RejectKind::PermissionDenied, Some("model"))
        );
        assert_eq!(f.kind(), "jwt");
    }

    #[tokio::test]
    async fn bad_jwks_files_fail_the_build() {
        let dir = tempfile::tempdir().unwrap();
        let build_with = |file: &str| {
            JwtFilter::from_config(
                &JwtSpec {
                    jwks_file: Some(file.into()),
                    ..spec()
                },
                &cx(dir.path()),
            )
            .err()
            .unwrap()
        };
        assert!(build_with("missing.json").contains("missing.json"));
        std::fs::write(dir.path().join("bad.json"), "{not json").unwrap();
        assert!(build_with("bad.json").contains("bad.json"));
        std::fs::write(dir.path().join("nokeys.json"), r#"{"foo": []}"#).unwrap();
        assert!(build_with("nokeys.json").contains("no `keys`"));
        // only symmetric and encryption keys: nothing usable
        let unusable = json!({"keys": [
            {"kty": "oct", "kid": "h", "k": "c2VjcmV0"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": jwks(&[("rsa-1", "x")])["keys"][0]["n"], "e": "AQAB"},
        ]});
        std::fs::write(dir.path().join("unusable.json"), unusable.to_string()).unwrap();
        assert!(build_with("unusable.json").contains("no usable signing key"));
    }

    #[tokio::test]
    async fn key_added_to_the_jwks_file_is_picked_up_on_unknown_kid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        std::fs::write(&path, jwks(&[("rsa-1", "rsa-1")]).to_string()).unwrap();
        let f = JwtFilter::from_config(
            &JwtSpec {
                jwks_file: Some("keys.json".into()),
                ..spec()
            },
            &cx(dir.path()),
        )
        .unwrap();
        principal(&f, &rs(&claims())).await;

        std::fs::write(
            &path,
            jwks(&[("rsa-1", "rsa-1"), ("ec-1", "ec-new")]).to_string(),
        )
        .unwrap();
        let t = sign(Algorithm::ES256, Some("ec-new"), &ec(), &claims());
        assert_eq!(&*principal(&f, &t).await.user, "alice");
        principal(&f, &rs(&claims())).await;

        // a file that turns unreadable keeps the keys already loaded
        std::fs::write(&path, "garbage").unwrap();
        assert!(
            refused(&f, &sign(Algorithm::EdDSA, Some("ed-1"), &ed(), &claims()))
                .await
                .contains("unknown")
        );
        principal(&f, &t).await;
    }

    /// A JWKS endpoint counting its fetches; `gate` holds each answer until a permit is added.
    struct Idp {
        answer: std::sync::Mutex<(u16, Value)>,
        fetches: AtomicUsize,
        gate: tokio::sync::Semaphore,
    }

    impl Idp {
        fn new(jwks: Value, gate_permits: usize) -> Arc<Self> {
            Arc::new(Idp {
                answer: std::sync::Mutex::new((200, jwks)),
                fetches: AtomicUsize::new(0),
                gate: tokio::sync::Semaphore::new(gate_permits),
            })
        }

        fn set(&self, status: u16, jwks: Value) {
            *self.answer.lock().unwrap() = (status, jwks);
        }

        fn fetches(&self) -> usize {
            self.fetches.load(Ordering::SeqCst)
        }
    }

    async fn jwks_handler(State(idp): State<Arc<Idp>>) -> (StatusCode, axum::Json<Value>) {
        idp.fetches.fetch_add(1, Ordering::SeqCst);
        idp.gate.acquire().await.unwrap().forget();
        let (status, body) = idp.answer.lock().unwrap().clone();
        (StatusCode::from_u16(status).unwrap(), axum::Json(body))
    }

    async fn serve(idp: Arc<Idp>) -> String {
        let app = axum::Router::new()
            .route("/jwks", axum::routing::get(jwks_handler))
            .with_state(idp);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}/jwks")
    }

    #[tokio::test]
    async fn url_jwks_is_fetched_lazily_and_refreshed_at_most_once_per_interval() {
        let idp = Idp::new(jwks(&[("rsa-1", "a")]), 1000);
        let f = build(&url_spec(&serve(idp.clone()).await, 10));
        assert_eq!(idp.fetches(), 0, "building must not fetch");

        let ta = sign(Algorithm::RS256, Some("a"), &rsa(), &claims());
        principal(&f, &ta).await;
        principal(&f, &ta).await;
        assert_eq!(idp.fetches(), 1);

        // rotate: `a` retired, `b` published
        idp.set(200, jwks(&[("ec-1", "b")]));
        let tb = sign(Algorithm::ES256, Some("b"), &ec(), &claims());
        assert!(refused(&f, &tb).await.contains("unknown"));
        assert_eq!(idp.fetches(), 1, "the first fetch was less than 10 s ago");

        tokio::time::pause();
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(refused(&f, &tb).await.contains("unknown"));
        assert_eq!(idp.fetches(), 1, "9 s after the first fetch");
        tokio::time::advance(Duration::from_secs(1)).await;
        tokio::time::resume(); // the fetch itself runs on the real clock (its 2 s timeout must not auto-advance)

        principal(&f, &tb).await;
        assert_eq!(idp.fetches(), 2);
        // `a` is gone now, and the refresh it would trigger is rate-limited
        assert!(refused(&f, &ta).await.contains("unknown"));
        assert_eq!(idp.fetches(), 2);
    }

    #[tokio::test]
    async fn concurrent_unknown_kids_trigger_a_single_fetch() {
        let idp = Idp::new(jwks(&[("rsa-1", "a")]), 1000);
        // no rate limit: only single-flight stops the stampede
        let f = Arc::new(build(&url_spec(&serve(idp.clone()).await, 0)));
        principal(&f, &sign(Algorithm::RS256, Some("a"), &rsa(), &claims())).await;
        assert_eq!(idp.fetches(), 1);

        idp.set(200, jwks(&[("rsa-1", "a"), ("ec-1", "b")]));
        idp.gate.forget_permits(1000);
        let tb = sign(Algorithm::ES256, Some("b"), &ec(), &claims());
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (f, tb) = (f.clone(), tb.clone());
                tokio::spawn(
                    async move { run(&f, &tb).await.1.principal.map(|p| p.user.to_string()) },
                )
            })
            .collect();
        // wait until the one fetch is in flight (held at the gate) and every task has queued behind it
        while idp.fetches() < 2 {
            tokio::task::yield_now().await;
        }
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        idp.gate.add_permits(1000);
        for t in tasks {
            assert_eq!(t.await.unwrap().as_deref(), Some("alice"));
        }
        assert_eq!(idp.fetches(), 2);
    }

    #[tokio::test]
    async fn failed_fetches_keep_the_old_keys() {
        let idp = Idp::new(json!({"error": "down"}), 1000);
        idp.set(503, json!({"error": "down"}));
        let f = build(&url_spec(&serve(idp.clone()).await, 0));
        let ta = sign(Algorithm::RS256, Some("a"), &rsa(), &claims());
        assert!(refused(&f, &ta).await.contains("unknown"));
        assert_eq!(idp.fetches(), 1);

        idp.set(200, jwks(&[("rsa-1", "a")]));
        principal(&f, &ta).await;
        assert_eq!(idp.fetches(), 2);

        for (status, body) in [
            (500, json!({})),
            (200, json!({"keys": []})),
            (200, json!("nonsense")),
        ] {
            idp.set(status, body);
            let tb = sign(Algorithm::ES256, Some("b"), &ec(), &claims());
            assert!(refused(&f, &tb).await.contains("unknown"));
            principal(&f, &ta).await;
        }
        assert_eq!(idp.fetches(), 5);
    }

    #[test]
    fn base64url_and_shape_helpers() {
        for s in [
            "",
            "f",
            "fo",
            "foo",
            "foob",
            "fooba",
            "foobar",
            r#"{"alg":"RS256"}"#,
        ] {
            assert_eq!(b64url_decode(&b64url(s.as_bytes())).unwrap(), s.as_bytes());
        }
        assert!(b64url_decode("a+b/").is_none());
        assert!(jwt_shaped("eyJh.eyJi.c2ln") && jwt_shaped("eyJh.eyJi."));
        assert!(
            !jwt_shaped("eyJh.eyJi")
                && !jwt_shaped("a.b.c.d")
                && !jwt_shaped(".b.c")
                && !jwt_shaped("a.b+.c")
        );
    }
}
