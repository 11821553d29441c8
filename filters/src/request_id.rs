//! `request-id`: keep a well-formed incoming `x-request-id` or mint one; the proxy sends it upstream and
//! returns it. (The caller's W3C `traceparent` is not the filter's: it crosses the gateway unchanged
//! through the header allow-list, `proxy/src/headers.rs`.)

use crate::chain::{Filter, RequestCtx, RequestInfo};
use crate::Rejection;
use async_trait::async_trait;
use leaky_config::RequestIdConfig;

/// A constant: a lookup by `&str` parses the name on every request.
const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

pub struct RequestIdFilter {
    trust_incoming: bool,
}

/// Longest incoming id kept; longer or odd ones are replaced (they end up in logs and headers).
const MAX_LEN: usize = 128;

impl RequestIdFilter {
    pub fn from_config(spec: &RequestIdConfig) -> Self {
        RequestIdFilter {
            trust_incoming: spec.trust_incoming,
        }
    }

    /// A fresh id: `req_` + 32 hex digits of a v4 UUID (written straight into the string's one
    /// allocation, without `fmt`: every request without a trusted incoming id mints one).
    pub fn mint() -> String {
        let mut hex = [0u8; uuid::fmt::Simple::LENGTH];
        let mut id = String::with_capacity(4 + hex.len());
        id.push_str("req_");
        id.push_str(uuid::Uuid::new_v4().simple().encode_lower(&mut hex));
        id
    }

    fn acceptable(id: &str) -> bool {
        !id.is_empty()
            && id.len() <= MAX_LEN
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
    }
}

#[async_trait]
impl Filter for RequestIdFilter {
    fn kind(&self) -> &'static str {
        "request-id"
    }

    async fn on_request(
        &self,
        req: &RequestInfo<'_>,
        ctx: &mut RequestCtx,
    ) -> Result<(), Rejection> {
        let incoming = req.headers.get(&X_REQUEST_ID).and_then(|v| v.to_str().ok());
        ctx.request_id = match incoming {
            Some(id) if self.trust_incoming && Self::acceptable(id) => id.to_string(),
            _ => Self::mint(),
        };
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http::{HeaderMap, Method};

    async fn run(headers: &HeaderMap, trust: bool) -> RequestCtx {
        let f = RequestIdFilter {
            trust_incoming: trust,
        };
        let mut ctx = RequestCtx::default();
        let req = RequestInfo {
            method: &Method::POST,
            path: "/v1",
            query: None,
            headers,
        };
        f.on_request(&req, &mut ctx).await.unwrap();
        ctx
    }

    #[tokio::test]
    async fn keeps_well_formed_incoming_id() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", "abc-123".parse().unwrap());
        assert_eq!(run(&h, true).await.request_id, "abc-123");
    }

    #[tokio::test]
    async fn mints_when_absent_untrusted_or_malformed() {
        let mut h = HeaderMap::new();
        let minted = run(&h, true).await.request_id;
        assert!(minted.starts_with("req_") && minted.len() == 36, "{minted}");
        h.insert("x-request-id", "abc".parse().unwrap());
        assert_ne!(run(&h, false).await.request_id, "abc");
        h.insert("x-request-id", "has space".parse().unwrap());
        assert!(run(&h, true).await.request_id.starts_with("req_"));
    }

    #[test]
    fn minted_ids_are_distinct_v4_uuids_in_lower_hex() {
        let ids: std::collections::HashSet<String> =
            (0..1000).map(|_| RequestIdFilter::mint()).collect();
        assert_eq!(ids.len(), 1000);
        for id in &ids {
            let hex = id.strip_prefix("req_").unwrap();
            assert_eq!(hex.len(), 32, "{id}");
            assert!(
                hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
                "{id}"
            );
            let u = uuid::Uuid::parse_str(hex).unwrap();
            assert_eq!(u.get_version_num(), 4, "{id}");
            assert_eq!(u.simple().to_string(), hex);
        }
    }
}
