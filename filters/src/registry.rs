//! The registry: a route's YAML filter specs → its [`Chain`], and the [`BuildContext`] (what a config
//! version hands its filters). The one module that names every filter; filters never import it, their
//! constructors take exactly what they need.

use crate::api_key::ApiKeyFilter;
use crate::chain::{Chain, Filter};
use crate::concurrency::ConcurrencyFilter;
use crate::jwt::{JwksCache, JwtBuildError, JwtDeps, JwtFilter};
use crate::key_index::SharedKeyIndex;
use crate::rate_limit::RateLimitFilter;
use crate::request_id::RequestIdFilter;
use leaky_config::{FilterConfig, Flags};
use leaky_limit::{DecisionSink, Limiter};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

/// What filters may need from the config version they are built for.
#[derive(Clone)]
pub struct BuildContext {
    /// The live key index (published per version, outside the chains).
    pub keys: Arc<SharedKeyIndex>,
    /// JWKS keys by source, kept across versions.
    pub jwks: Arc<JwksCache>,
    /// Directory relative file paths resolve against.
    pub base_dir: PathBuf,
    /// Names of the configured tiers (a JWT may only claim one of these).
    pub tiers: Arc<BTreeSet<String>>,
    /// The config version's compiled limiter (policies + store), shared by every route's `rate-limit`.
    pub limiter: Option<Arc<Limiter>>,
    /// Where `rate-limit` counts its decisions (the proxy's metrics).
    pub decisions: Option<DecisionSink>,
    /// The version's feature flags: a filter gated by a flag resolves it here, once per version
    /// (`flags.resolve(&KNOWN)`), and calls `Flag::is_on(org)` per request — no lookup by name then.
    pub flags: Flags,
}

impl BuildContext {
    /// What a `jwt` filter borrows while it is built.
    fn jwt(&self) -> JwtDeps<'_> {
        JwtDeps {
            jwks: &self.jwks,
            base_dir: &self.base_dir,
            tiers: &self.tiers,
        }
    }
}

/// Why a route's chain cannot be built (the reload fails; the previous config keeps serving).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Jwt(#[from] JwtBuildError),
    #[error("the `rate-limit` filter needs the limiter")]
    NoLimiter,
}

/// YAML `kind` → filter. Fallible only on I/O (e.g. an unreadable JWKS file), which fails the reload
/// and keeps the previous config serving.
pub fn build_chain(specs: &[FilterConfig], cx: &BuildContext) -> Result<Chain, BuildError> {
    let mut filters: Vec<Arc<dyn Filter>> = Vec::with_capacity(specs.len());
    for spec in specs {
        filters.push(match spec {
            FilterConfig::RequestId(s) => Arc::new(RequestIdFilter::from_config(s)),
            FilterConfig::ApiKey(s) => Arc::new(ApiKeyFilter::from_config(s, cx.keys.clone())),
            FilterConfig::Jwt(s) => Arc::new(JwtFilter::from_config(s, cx.jwt())?),
            FilterConfig::Concurrency(s) => Arc::new(ConcurrencyFilter::from_config(s)),
            FilterConfig::RateLimit => match &cx.limiter {
                Some(l) => {
                    Arc::new(RateLimitFilter::new(l.clone()).with_decisions(cx.decisions.clone()))
                }
                None => return Err(BuildError::NoLimiter),
            },
        });
    }
    Ok(Chain::new(filters))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::chain::{RequestCtx, RequestInfo};
    use crate::key_index::KeyIndex;
    use http::{HeaderMap, Method};
    use leaky_config::{
        ApiKey, ApiKeyConfig, ConcurrencyConfig, ConcurrencyScope, JwksSource, JwtAlgorithm,
        JwtClaims, JwtConfig, RequestIdConfig,
    };
    use sha2::{Digest, Sha256};
    use std::time::Duration;

    fn cx() -> BuildContext {
        BuildContext {
            keys: Arc::new(SharedKeyIndex::new(Arc::new(KeyIndex::new(&[])))),
            jwks: Arc::new(JwksCache::default()),
            base_dir: std::env::temp_dir(),
            tiers: Arc::new(["pro".to_string()].into()),
            limiter: None,
            decisions: None,
            flags: Flags::default(),
        }
    }

    #[test]
    fn builds_one_filter_per_spec_in_order() {
        let specs = [
            FilterConfig::RequestId(RequestIdConfig {
                trust_incoming: true,
            }),
            FilterConfig::ApiKey(ApiKeyConfig { optional: false }),
            FilterConfig::Concurrency(ConcurrencyConfig {
                max: std::num::NonZeroU32::new(2).unwrap(),
                scope: ConcurrencyScope::Key,
            }),
        ];
        let chain = build_chain(&specs, &cx()).unwrap();
        assert_eq!(chain.kinds(), ["request-id", "api-key", "concurrency"]);
        assert!(!chain.wants_cost());
        assert!(build_chain(&[], &cx()).unwrap().kinds().is_empty());
    }

    #[test]
    fn rate_limit_without_a_limiter_fails_the_build() {
        let e = build_chain(&[FilterConfig::RateLimit], &cx()).unwrap_err();
        assert!(matches!(e, BuildError::NoLimiter), "{e}");
    }

    #[test]
    fn a_missing_jwks_file_fails_the_build_with_its_name() {
        let jwt = JwtConfig {
            jwks: JwksSource::File("no-such-jwks.json".into()),
            algorithms: vec![JwtAlgorithm::RS256],
            issuer: None,
            audiences: vec![],
            leeway: Duration::from_secs(0),
            min_refresh_interval: Duration::from_secs(10),
            claims: JwtClaims::default(),
            default_tier: None,
            optional: false,
        };
        let e = build_chain(&[FilterConfig::Jwt(Box::new(jwt))], &cx()).unwrap_err();
        assert!(matches!(e, BuildError::Jwt(_)), "{e}");
        assert!(e.to_string().contains("no-such-jwks.json"), "{e}");
    }

    /// The `api-key` filter reads the index the context shares: a key published after the chain was
    /// built authenticates without a rebuild.
    #[tokio::test]
    async fn api_key_filters_read_the_shared_live_index() {
        let cx = cx();
        let chain = build_chain(
            &[FilterConfig::ApiKey(ApiKeyConfig { optional: false })],
            &cx,
        )
        .unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::AUTHORIZATION,
            "Bearer lt-new".parse().unwrap(),
        );
        let req = RequestInfo {
            method: &Method::POST,
            path: "/v1/chat/completions",
            query: None,
            headers: &headers,
        };
        let mut ctx = RequestCtx::default();
        assert!(chain.on_request(&req, &mut ctx).await.is_err());

        cx.keys.publish(Arc::new(KeyIndex::new(&[ApiKey {
            id: "k-new".into(),
            sha256: Sha256::digest(b"lt-new").into(),
            user: "u1".into(),
            org: None,
            tier: "pro".into(),
            roles: vec![],
            models: vec![],
            expires_at: None,
        }])));
        let mut ctx = RequestCtx::default();
        chain.on_request(&req, &mut ctx).await.unwrap();
        assert_eq!(
            ctx.principal.map(|p| p.id.to_string()).as_deref(),
            Some("k-new")
        );
    }
}
