//! The registry: a route's YAML filter specs → its [`Chain`], and the [`BuildContext`] (what a config
//! version hands its filters). The one module that names every filter; filters never import it, their
//! constructors take exactly what they need.

use crate::api_key::ApiKeyFilter;
use crate::chain::{Chain, Filter};
use crate::concurrency::ConcurrencyFilter;
use crate::jwt::{JwksCache, JwtDeps, JwtFilter};
use crate::key_index::SharedKeyIndex;
use crate::rate_limit::RateLimitFilter;
use crate::request_id::RequestIdFilter;
use leaky_config::FilterConfig;
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

/// YAML `kind` → filter. Fallible only on I/O (e.g. an unreadable JWKS file), which fails the reload
/// and keeps the previous config serving.
pub fn build_chain(specs: &[FilterConfig], cx: &BuildContext) -> Result<Chain, String> {
    let mut filters: Vec<Arc<dyn Filter>> = Vec::with_capacity(specs.len());
    for spec in specs {
        filters.push(match spec {
            FilterConfig::RequestId(s) => Arc::new(RequestIdFilter::from_config(s)),
            FilterConfig::ApiKey(s) => Arc::new(ApiKeyFilter::from_config(s, cx.keys.clone())),
            FilterConfig::Jwt(s) => {
                Arc::new(JwtFilter::from_config(s, cx.jwt()).map_err(|e| e.to_string())?)
            }
            FilterConfig::Concurrency(s) => Arc::new(ConcurrencyFilter::from_config(s)),
            FilterConfig::RateLimit => match &cx.limiter {
                Some(l) => {
                    Arc::new(RateLimitFilter::new(l.clone()).with_decisions(cx.decisions.clone()))
                }
                None => return Err("the `rate-limit` filter needs the limiter".into()),
            },
        });
    }
    Ok(Chain::new(filters))
}
