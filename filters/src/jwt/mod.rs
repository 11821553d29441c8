//! `jwt`: authenticate with a bearer JWT verified against a JWKS.
//!
//! - The JWKS comes from a file (read when the config is built: an unreadable or invalid file fails the
//!   reload) or a URL (fetched lazily on the first token, never while building).
//! - Keys live in the process-wide `JwksCache` (`cache.rs`), one entry per source, not in the filter:
//!   a reload keeps the keys fetched from a URL and the refresh rate limit. They are read without a
//!   lock. A token whose `kid` is unknown refreshes the set (file: re-read; URL: fetch), single-flight
//!   and at most once per `min_refresh_interval_seconds`, then the lookup is retried once. A failed
//!   refresh keeps the old keys.
//! - Only the configured asymmetric algorithms are accepted, and only with a key of the matching type
//!   (and curve); `none` and HS* never are. `exp` is required; `nbf`, `iss`, `aud` are checked.
//! - Time: jsonwebtoken's own `exp`/`nbf` checks read the system clock, so they are turned off and done
//!   here against `RequestCtx::now_unix` (the request's injected clock). The refresh rate limit uses
//!   `tokio::time::Instant`, which tests drive with `tokio::time::pause`/`advance`.
//!
//! - Revoked tokens: a verified token whose `jti` is in the process-wide [`RevokedTokens`] (pushed by
//!   the control plane, `docs/config-protocol.md`) is refused; the check is a lock-free set lookup.
//!
//! - Verified tokens are remembered (`verified.rs`): a token seen again pays the time and revocation
//!   checks and a map lookup, not another signature verification, until the JWKS changes.
//!
//! Claims map onto a [`Principal`] through the `claims` names; the model allow-list is enforced in
//! `on_request_body` exactly as `api-key` does.

use crate::api_key::check_model_allowed;
use crate::chain::{Filter, RequestCtx, RequestInfo};
use crate::{AuthMethod, Principal, RejectKind, Rejection};
use async_trait::async_trait;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use leaky_config::{JwksSource, JwtAlgorithm, JwtClaims, JwtConfig, ModelPattern};
use serde_json::{Map, Value};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

mod cache;
mod jwks;
mod revoked;
#[cfg(test)]
mod tests;
mod verified;

use cache::Jwks;
pub use cache::JwksCache;
pub use jwks::JwksError;
use jwks::{Lookup, VerifyKey};
pub use revoked::RevokedTokens;
use verified::{Verified, VerifiedTokens};

/// Why a `jwt` filter cannot be built from its settings (fails the reload; the last good config stays).
#[derive(Debug, thiserror::Error)]
pub enum JwtBuildError {
    #[error("jwt: unsupported algorithm `{0}`")]
    UnsupportedAlgorithm(String),
    #[error("jwt: `algorithms` must list at least one algorithm")]
    NoAlgorithm,
    #[error("jwt: needs exactly one of `jwks_file` or `jwks_url`")]
    JwksSource,
    /// `what` names the source (`JWKS file `path``).
    #[error("jwt: cannot read {what}: {error}")]
    ReadFile {
        what: String,
        #[source]
        error: std::io::Error,
    },
    #[error("jwt: {what}: {error}")]
    Jwks {
        what: String,
        #[source]
        error: JwksError,
    },
    #[error("jwt: cannot build the HTTP client for `{url}`: {error}")]
    HttpClient {
        url: String,
        #[source]
        error: reqwest::Error,
    },
}

/// The largest bearer token the filter looks at. Access tokens of this gateway's issuers are well under
/// 2 KiB; the bound keeps an attacker's megabyte-sized token from being base64-decoded and JSON-parsed
/// (twice: header, then claims) on every request.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// What building a `jwt` filter borrows from its config version (the registry's `BuildContext`).
#[derive(Clone, Copy)]
pub struct JwtDeps<'a> {
    /// JWKS keys by source, kept across versions.
    pub jwks: &'a JwksCache,
    /// Directory a relative `jwks_file` resolves against.
    pub base_dir: &'a Path,
    /// Names of the configured tiers (a token may only claim one of these).
    pub tiers: &'a Arc<BTreeSet<String>>,
}

pub struct JwtFilter {
    /// The source's keys, shared with every version's filters naming the same source.
    jwks: Arc<Jwks>,
    min_refresh: Duration,
    algorithms: Vec<Algorithm>,
    /// One validation per accepted algorithm (jsonwebtoken insists every listed algorithm matches the key's
    /// family, so a multi-family list cannot be shared).
    validations: HashMap<Algorithm, Validation>,
    leeway: i64,
    claims: JwtClaims,
    default_tier: Option<Arc<str>>,
    /// Configured tier names; a token naming another tier is refused.
    tiers: Arc<BTreeSet<String>>,
    optional: bool,
    /// Token ids the control plane revoked (process-wide, pushed over the watch stream).
    revoked: Arc<RevokedTokens>,
    /// Tokens already verified by this filter (see `verified.rs`); `None` when turned off.
    verified: Option<VerifiedTokens>,
}

impl JwtFilter {
    /// Builds from validated settings (`leaky_config` checked the algorithms, the JWKS source and the
    /// default tier); fails only on I/O: an unreadable or invalid JWKS file, an HTTP client.
    pub fn from_config(spec: &JwtConfig, deps: JwtDeps<'_>) -> Result<Self, JwtBuildError> {
        ensure_crypto_provider();
        let mut algorithms = Vec::with_capacity(spec.algorithms.len());
        for a in spec.algorithms.iter().map(|a| algorithm(*a)) {
            if !algorithms.contains(&a) {
                algorithms.push(a);
            }
        }
        let validations = algorithms
            .iter()
            .map(|a| (*a, validation(*a, spec)))
            .collect();
        let jwks = match &spec.jwks {
            JwksSource::File(file) => deps.jwks.file(deps.base_dir.join(file), &algorithms)?,
            JwksSource::Url(url) => deps.jwks.url(url, &algorithms)?,
        };
        Ok(JwtFilter {
            jwks,
            min_refresh: spec.min_refresh_interval,
            algorithms,
            validations,
            leeway: i64::try_from(spec.leeway.as_secs()).unwrap_or(i64::MAX),
            claims: spec.claims.clone(),
            default_tier: spec.default_tier.as_deref().map(Arc::from),
            tiers: deps.tiers.clone(),
            optional: spec.optional,
            revoked: deps.jwks.revoked().clone(),
            verified: Some(VerifiedTokens::default()),
        })
    }

    /// The same filter verifying every token's signature on every request (benchmarks measure the
    /// cost of a first sight this way).
    #[doc(hidden)]
    pub fn without_verified_cache(mut self) -> Self {
        self.verified = None;
        self
    }

    /// A token verified before under the current JWKS, checked again for time and revocation;
    /// `None` to verify it in full.
    fn remembered(&self, token: &str, now: i64) -> Option<Result<Arc<Principal>, Rejection>> {
        let cache = self.verified.as_ref()?;
        let v = cache.get(token)?;
        if v.generation != self.jwks.generation() {
            cache.forget(token);
            return None;
        }
        if let Err(r) = times_ok(v.exp, v.nbf, now, self.leeway) {
            return Some(Err(r));
        }
        if v.jti.as_deref().is_some_and(|j| self.revoked.is_revoked(j)) {
            return Some(Err(unauthenticated("The token has been revoked.")));
        }
        Some(Ok(v.principal.clone()))
    }

    /// Verify `token` (or find it verified) and map its claims; `now` is unix seconds.
    async fn authenticate(&self, token: &str, now: i64) -> Result<Arc<Principal>, Rejection> {
        if let Some(known) = self.remembered(token, now) {
            return known;
        }
        let generation = self.jwks.generation();
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
        let (exp, nbf) = check_times(&data.claims, now, self.leeway)?;
        let jti = match data.claims.get("jti") {
            Some(Value::String(jti)) => Some(jti.as_str()),
            _ => None,
        };
        if jti.is_some_and(|j| self.revoked.is_revoked(j)) {
            return Err(unauthenticated("The token has been revoked."));
        }
        let principal = Arc::new(self.principal(&data.claims)?);
        if let Some(cache) = &self.verified {
            // Under the generation read before the key lookup: a refresh in between makes the
            // entry stale at once rather than vouch for a key that may be gone.
            let verified = Verified {
                generation,
                exp,
                nbf,
                jti: jti.map(Box::from),
                principal: principal.clone(),
            };
            cache.insert(token, verified);
        }
        Ok(principal)
    }

    /// The key for (`kid`, `alg`), refreshing the set once if the `kid` is unknown.
    async fn find_key(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Arc<VerifyKey>, Rejection> {
        let found = self.jwks.find_key(kid, alg, self.min_refresh).await;
        lookup_result(found, kid, alg)
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
        if !self.tiers.contains(&*tier) {
            return Err(unauthenticated(format!(
                "The token's tier `{tier}` is not a tier of this gateway."
            )));
        }
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
            // An oversized token is refused before anything scans or decodes it.
            // An optional filter leaves a long non-JWT to the next filter; `eyJ` (base64url of `{"`)
            // is how every JWT starts, and checking it reads three bytes.
            Some(t) if t.len() > MAX_TOKEN_BYTES => {
                if self.optional && !t.starts_with("eyJ") {
                    return Ok(());
                }
                return Err(unauthenticated(format!(
                    "The bearer token exceeds {MAX_TOKEN_BYTES} bytes."
                )));
            }
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
                ctx.principal = Some(p);
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

/// jsonwebtoken's name for an algorithm the config accepted.
fn algorithm(a: JwtAlgorithm) -> Algorithm {
    match a {
        JwtAlgorithm::RS256 => Algorithm::RS256,
        JwtAlgorithm::RS384 => Algorithm::RS384,
        JwtAlgorithm::RS512 => Algorithm::RS512,
        JwtAlgorithm::PS256 => Algorithm::PS256,
        JwtAlgorithm::PS384 => Algorithm::PS384,
        JwtAlgorithm::PS512 => Algorithm::PS512,
        JwtAlgorithm::ES256 => Algorithm::ES256,
        JwtAlgorithm::ES384 => Algorithm::ES384,
        JwtAlgorithm::EdDSA => Algorithm::EdDSA,
    }
}

fn validation(alg: Algorithm, spec: &JwtConfig) -> Validation {
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

/// `exp` (required) and `nbf` (if present) against `now`, with `leeway` seconds of skew; returns
/// both for the verified-token cache.
fn check_times(
    c: &Map<String, Value>,
    now: i64,
    leeway: i64,
) -> Result<(i64, Option<i64>), Rejection> {
    let Some(exp) = c.get("exp").and_then(numeric) else {
        return Err(unauthenticated("The token has no valid `exp` claim."));
    };
    let nbf = match c.get("nbf") {
        None | Some(Value::Null) => None,
        Some(v) => match numeric(v) {
            Some(nbf) => Some(nbf),
            None => return Err(unauthenticated("The token's `nbf` claim is malformed.")),
        },
    };
    times_ok(exp, nbf, now, leeway)?;
    Ok((exp, nbf))
}

fn times_ok(exp: i64, nbf: Option<i64>, now: i64, leeway: i64) -> Result<(), Rejection> {
    if now >= exp.saturating_add(leeway) {
        return Err(unauthenticated("The token has expired."));
    }
    if nbf.is_some_and(|nbf| now.saturating_add(leeway) < nbf) {
        return Err(unauthenticated(
            "The token is not valid yet (its `nbf` is in the future).",
        ));
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
