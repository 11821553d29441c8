//! `api-key`: authenticate with a key from the config's `keys` (stored hashed). The key is read from
//! `Authorization: Bearer`, `x-goog-api-key` or `?key=` (Google SDKs use the last two), so every dialect's
//! SDK works unchanged. Unknown or expired → 401; a model outside the key's allow-list → 403.

use crate::chain::{Filter, RequestCtx, RequestInfo};
use crate::key_index::{Lookup, SharedKeyIndex};
use crate::{RejectKind, Rejection};
use async_trait::async_trait;
use leaky_config::ApiKeyConfig;
use std::sync::Arc;

pub struct ApiKeyFilter {
    /// The live index (published per config version), not a copy: a key change needs no new filter.
    keys: Arc<SharedKeyIndex>,
    optional: bool,
}

impl ApiKeyFilter {
    /// `keys` is the live index the registry hands every version's filters.
    pub fn from_config(spec: &ApiKeyConfig, keys: Arc<SharedKeyIndex>) -> Self {
        ApiKeyFilter {
            keys,
            optional: spec.optional,
        }
    }
}

// Constants: a lookup by `&str` parses the name on every request.
const X_GOOG_API_KEY: http::HeaderName = http::HeaderName::from_static("x-goog-api-key");
const X_API_KEY: http::HeaderName = http::HeaderName::from_static("x-api-key");

/// The presented credential, from the first place that has one.
pub(crate) fn presented_key<'a>(req: &'a RequestInfo<'_>) -> Option<&'a [u8]> {
    if let Some(v) = req.headers.get(http::header::AUTHORIZATION) {
        let v = v.as_bytes();
        if v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ") {
            return Some(trim(&v[7..]));
        }
    }
    if let Some(v) = req.headers.get(&X_GOOG_API_KEY) {
        return Some(trim(v.as_bytes()));
    }
    if let Some(v) = req.headers.get(&X_API_KEY) {
        return Some(trim(v.as_bytes()));
    }
    req.query_param("key").map(str::as_bytes)
}

fn trim(b: &[u8]) -> &[u8] {
    b.trim_ascii()
}

#[async_trait]
impl Filter for ApiKeyFilter {
    fn kind(&self) -> &'static str {
        "api-key"
    }

    async fn on_request(
        &self,
        req: &RequestInfo<'_>,
        ctx: &mut RequestCtx,
    ) -> Result<(), Rejection> {
        if ctx.principal.is_some() {
            return Ok(());
        }
        let Some(key) = presented_key(req).filter(|k| !k.is_empty()) else {
            if self.optional {
                return Ok(());
            }
            return Err(Rejection::new(
                RejectKind::Unauthenticated,
                "You didn't provide an API key. Send it as `Authorization: Bearer KEY`, `x-goog-api-key: KEY` or `?key=KEY`.",
            ));
        };
        let keys = self.keys.load();
        match keys.lookup(key, ctx.now_unix) {
            Lookup::Valid(p) => {
                ctx.principal = Some(p.clone());
                Ok(())
            }
            Lookup::Expired => Err(Rejection::new(
                RejectKind::Unauthenticated,
                "The API key provided has expired.",
            )),
            Lookup::Unknown if self.optional && key.iter().filter(|b| **b == b'.').count() == 2 => {
                Ok(())
            }
            Lookup::Unknown => Err(Rejection::new(
                RejectKind::Unauthenticated,
                "Incorrect API key provided.",
            )),
        }
    }

    fn on_request_body(&self, _body: &[u8], ctx: &mut RequestCtx) -> Result<(), Rejection> {
        check_model_allowed(ctx)
    }
}

/// 403 when the authenticated principal may not use the request's model.
pub(crate) fn check_model_allowed(ctx: &RequestCtx) -> Result<(), Rejection> {
    match (&ctx.principal, &ctx.model) {
        (Some(p), Some(m)) if !p.may_use(m) => Err(Rejection::new(
            RejectKind::PermissionDenied,
            format!("This key is not allowed to use the model `{m}`."),
        )
        .with_param("model")),
        _ => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::KeyIndex;
    use http::{HeaderMap, Method};
    use leaky_config::{ApiKey, ModelPattern};
    use sha2::{Digest, Sha256};

    fn filter(optional: bool) -> ApiKeyFilter {
        let k = ApiKey {
            id: "k1".into(),
            sha256: Sha256::digest(b"lt-good").into(),
            user: "u1".into(),
            org: None,
            tier: "pro".into(),
            roles: vec![],
            models: vec![ModelPattern::parse("gpt-*")],
            expires_at: Some(1_000),
        };
        ApiKeyFilter {
            keys: Arc::new(SharedKeyIndex::new(Arc::new(KeyIndex::new(&[k])))),
            optional,
        }
    }

    async fn run(
        f: &ApiKeyFilter,
        headers: &[(&str, &str)],
        query: Option<&str>,
        now: i64,
    ) -> (Result<(), Rejection>, RequestCtx) {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let req = RequestInfo {
            method: &Method::POST,
            path: "/v1/chat/completions",
            query,
            headers: &h,
        };
        let mut ctx = RequestCtx {
            now_unix: now,
            ..Default::default()
        };
        let r = f.on_request(&req, &mut ctx).await;
        (r, ctx)
    }

    #[tokio::test]
    async fn accepts_key_from_each_place() {
        let f = filter(false);
        for (h, q) in [
            (vec![("authorization", "Bearer lt-good")], None),
            (vec![("authorization", "bearer  lt-good ")], None),
            (vec![("x-goog-api-key", "lt-good")], None),
            (vec![], Some("alt=sse&key=lt-good")),
        ] {
            let (r, ctx) = run(&f, &h, q, 0).await;
            assert!(r.is_ok(), "{h:?} {q:?}");
            assert_eq!(&*ctx.principal.unwrap().user, "u1");
        }
    }

    #[tokio::test]
    async fn refuses_missing_unknown_and_expired_keys() {
        let f = filter(false);
        let (r, _) = run(&f, &[], None, 0).await;
        assert_eq!(r.unwrap_err().kind, RejectKind::Unauthenticated);
        let (r, _) = run(&f, &[("authorization", "Bearer lt-bad")], None, 0).await;
        assert_eq!(r.unwrap_err().message, "Incorrect API key provided.");
        let (r, _) = run(&f, &[("authorization", "Bearer lt-good")], None, 1_000).await;
        assert_eq!(r.unwrap_err().message, "The API key provided has expired.");
    }

    #[tokio::test]
    async fn optional_passes_requests_without_key() {
        let (r, ctx) = run(&filter(true), &[], None, 0).await;
        assert!(r.is_ok() && ctx.principal.is_none());
    }

    #[tokio::test]
    async fn enforces_model_allow_list() {
        let f = filter(false);
        let (_, mut ctx) = run(&f, &[("authorization", "Bearer lt-good")], None, 0).await;
        ctx.model = Some("gpt-4o".into());
        assert!(f.on_request_body(b"", &mut ctx).is_ok());
        ctx.model = Some("qwen-plus".into());
        let e = f.on_request_body(b"", &mut ctx).unwrap_err();
        assert_eq!(
            (e.kind, e.param),
            (RejectKind::PermissionDenied, Some("model"))
        );
    }
}
