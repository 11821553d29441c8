//! `private_key_jwt` client authentication (RFC 7523 §2.2 and §3, OIDC Core §9): the client signs a
//! short-lived JWT with a private key whose public half it registered (its `jwks`), and sends it as
//! `client_assertion` with `client_assertion_type` = [`JWT_BEARER`]. No secret is ever shared.
//!
//! Checked: the algorithm is ES256, RS256 or EdDSA (never `none` or an HMAC: the header's `alg` must
//! also match the registered key's type and `alg`), the signature against the registered key (by
//! `kid`, or the only key), `iss` = `sub` = the client id, `aud` naming this server (the issuer, the
//! token endpoint or the endpoint being called), `exp` in the future on the injected clock and at
//! most [`MAX_LIFETIME_SECS`] away, and a `jti` never seen before for this client (Redis `SET NX`
//! until the assertion expires, across replicas).

use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::clients::Client;
use super::sessions::digest;
use super::{Identity, IdentityError};

/// The `client_assertion_type` of a JWT assertion (RFC 7523 §2.2).
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// The furthest in the future an assertion's `exp` may be (bounds the `jti` memory).
pub const MAX_LIFETIME_SECS: i64 = 3600 + 300;
const MAX_ASSERTION_LEN: usize = 8 * 1024;
const MAX_KEYS: usize = 10;

/// The registered public keys of a `private_key_jwt` client, if `value` is a JWKS of 1..=10 usable
/// ES256, RS256 or EdDSA keys.
pub fn parse_jwks(value: &serde_json::Value) -> Option<JwkSet> {
    let set: JwkSet = serde_json::from_value(value.clone()).ok()?;
    let usable = |k: &Jwk| {
        DecodingKey::from_jwk(k).is_ok()
            && !matches!(k.algorithm, AlgorithmParameters::OctetKey(_))
            && matches!(
                k.common.key_algorithm,
                None | Some(KeyAlgorithm::ES256 | KeyAlgorithm::RS256 | KeyAlgorithm::EdDSA)
            )
    };
    (!set.keys.is_empty() && set.keys.len() <= MAX_KEYS && set.keys.iter().all(usable))
        .then_some(set)
}

/// The client an assertion claims to come from (its unverified `sub`, else `iss`): which client's
/// keys to verify it with. Nothing is trusted before [`verify`].
pub fn claimed_client(assertion: &str) -> Option<String> {
    if assertion.len() > MAX_ASSERTION_LEN {
        return None;
    }
    let payload = assertion.split('.').nth(1)?;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&raw).ok()?;
    v.get("sub")
        .or_else(|| v.get("iss"))
        .and_then(|s| s.as_str())
        .map(str::to_owned)
}

#[derive(Debug, Deserialize)]
struct AssertionClaims {
    sub: String,
    exp: i64,
    #[serde(default)]
    jti: Option<String>,
}

/// The registered key an assertion with this header is checked against.
fn key_for(set: &JwkSet, header: &jsonwebtoken::Header) -> Option<DecodingKey> {
    let alg = match header.alg {
        Algorithm::ES256 => KeyAlgorithm::ES256,
        Algorithm::RS256 => KeyAlgorithm::RS256,
        Algorithm::EdDSA => KeyAlgorithm::EdDSA,
        _ => return None,
    };
    let jwk = match &header.kid {
        Some(kid) => set.find(kid)?,
        None if set.keys.len() == 1 => set.keys.first()?,
        None => return None,
    };
    if jwk.common.key_algorithm.is_some_and(|a| a != alg) {
        return None;
    }
    DecodingKey::from_jwk(jwk).ok()
}

/// Whether `assertion` authenticates `client` at `endpoint` (see the module docs). Only an
/// unreachable Redis is an error (503); every other failure is `false`.
pub(crate) async fn verify(
    identity: &Identity,
    client: &Client,
    assertion: &str,
    endpoint: &str,
) -> Result<bool, IdentityError> {
    if assertion.len() > MAX_ASSERTION_LEN {
        return Ok(false);
    }
    let Some(set) = client.jwks.as_ref().and_then(parse_jwks) else {
        return Ok(false);
    };
    let Ok(header) = jsonwebtoken::decode_header(assertion) else {
        return Ok(false);
    };
    let Some(key) = key_for(&set, &header) else {
        return Ok(false);
    };
    let iss = &identity.settings.issuer;
    let token_endpoint = format!("{iss}/oauth2/token");
    let mut v = Validation::new(header.alg);
    v.set_issuer(&[&client.id]);
    v.set_audience(&[iss.as_str(), token_endpoint.as_str(), endpoint]);
    v.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
    // Expiry is checked below on the injected clock.
    v.validate_exp = false;
    let Ok(data) = jsonwebtoken::decode::<AssertionClaims>(assertion, &key, &v) else {
        return Ok(false);
    };
    let c = data.claims;
    let now = identity.clock.now().timestamp();
    let jti = c.jti.filter(|j| !j.is_empty() && j.len() <= 256);
    let (true, true, Some(jti)) = (
        c.sub == client.id,
        c.exp > now && c.exp <= now + MAX_LIFETIME_SECS,
        jti,
    ) else {
        return Ok(false);
    };
    let ttl = u64::try_from(c.exp - now + 1).unwrap_or(1);
    let id = format!("{}:{}", client.id, digest(&jti));
    identity
        .sessions()?
        .claim("assertion-jti", &id, "1", ttl)
        .await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_claimed_client_is_read_from_sub_then_iss_without_trusting_it() {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let jwt = format!("{}.{}.sig", b64("{}"), b64(r#"{"iss":"a","sub":"b"}"#));
        assert_eq!(claimed_client(&jwt).as_deref(), Some("b"));
        let jwt = format!("{}.{}.sig", b64("{}"), b64(r#"{"iss":"a"}"#));
        assert_eq!(claimed_client(&jwt).as_deref(), Some("a"));
        assert_eq!(claimed_client("garbage"), None);
    }

    #[test]
    fn a_jwks_needs_usable_asymmetric_keys() {
        assert!(parse_jwks(&serde_json::json!({"keys": []})).is_none());
        let hmac = serde_json::json!({"keys": [{"kty": "oct", "k": "c2VjcmV0", "alg": "HS256"}]});
        assert!(parse_jwks(&hmac).is_none());
        let hmac = serde_json::json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]});
        assert!(parse_jwks(&hmac).is_none());
        let ec = serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256",
            "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
            "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]});
        assert!(parse_jwks(&ec).is_some());
    }
}
