//! `jwt`: placeholder being replaced by the full implementation.

use crate::chain::{BuildContext, Filter};
use async_trait::async_trait;
use leaky_config::JwtSpec;

pub struct JwtFilter;

impl JwtFilter {
    pub fn from_config(_spec: &JwtSpec, _cx: &BuildContext) -> Result<Self, String> {
        Err("the jwt filter is not built yet".into())
    }
}

#[async_trait]
impl Filter for JwtFilter {
    fn kind(&self) -> &'static str {
        "jwt"
    }
}
