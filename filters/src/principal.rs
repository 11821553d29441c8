//! Who is calling: the same type whether the caller presented an API key or a JWT, so every later filter
//! (rate limits, quotas, model allow-lists) reads one thing.

use leaky_config::ModelPattern;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    ApiKey,
    Jwt,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The API key id, or the JWT `jti`/subject; never the secret itself.
    pub id: Arc<str>,
    pub user: Arc<str>,
    pub org: Option<Arc<str>>,
    pub tier: Arc<str>,
    pub roles: Arc<[String]>,
    /// Models this principal may use; empty allows all.
    pub models: Arc<[ModelPattern]>,
    pub method: AuthMethod,
}

impl Principal {
    /// Whether `model` is on this principal's allow-list.
    pub fn may_use(&self, model: &str) -> bool {
        self.models.is_empty() || self.models.iter().any(|p| p.matches(model))
    }
}
