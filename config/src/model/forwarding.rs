//! What crosses the gateway between caller and provider, as config: header patterns a route or provider
//! lets through (`forward_headers`), the headers the gateway never lets through whatever the config
//! says, the peers trusted to report a client address (`server.trusted_proxies`), and the provider's
//! account headers (`organization`, `project`, `workspace`). The data plane compiles these once per
//! config version (`proxy/src/headers.rs`).

use crate::validate::Check;
use std::net::IpAddr;

/// Request headers the gateway never copies from the caller to the provider, and response headers it
/// never copies back, whatever `forward_headers` says:
/// - hop-by-hop headers (they describe one connection, not the request);
/// - framing, routing and tracing the gateway sets itself (`host`, `content-length`, `x-request-id`,
///   `forwarded`, `x-forwarded-*`), and `accept-encoding` (the gateway reads the provider's usage, so it
///   asks for an identity body);
/// - credentials: the caller's authenticate to the gateway, the gateway's own go upstream;
/// - account selection: they pick the gateway's provider account (billing, quota, data), so they come
///   from the provider's config (`organization`, `project`, `workspace`);
/// - cookies and origin-wide policies a provider sets on its own origin (`set-cookie`, `alt-svc`,
///   `strict-transport-security`), which would apply to the gateway's origin.
pub const NEVER_FORWARDED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "expect",
    "accept-encoding",
    "x-request-id",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
    "authorization",
    "x-api-key",
    "x-goog-api-key",
    "cookie",
    "openai-organization",
    "openai-project",
    "x-goog-user-project",
    "x-dashscope-workspace",
    "set-cookie",
    "set-cookie2",
    "alt-svc",
    "strict-transport-security",
];

/// A header name, or a prefix of names (`x-stainless-*`), lower case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderPattern {
    Exact(String),
    Prefix(String),
}

impl HeaderPattern {
    /// Whether `name` (lower case, as `http::HeaderName` keeps it) matches.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            HeaderPattern::Exact(n) => n == name,
            HeaderPattern::Prefix(p) => name.starts_with(p.as_str()),
        }
    }
}

/// An IP network: an address and a prefix length (`10.0.0.0/8`, `::1/128`; a bare address is a /32
/// or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    bits: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Option<Cidr> {
        let (addr, bits) = match s.split_once('/') {
            Some((a, b)) => (a.parse::<IpAddr>().ok()?, Some(b.parse::<u8>().ok()?)),
            None => (s.parse::<IpAddr>().ok()?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let bits = bits.unwrap_or(max);
        (bits <= max).then_some(Cidr { addr, bits })
    }

    /// Whether `ip` is in this network. An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`, what a
    /// dual-stack listener reports) counts as its IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let mask = |width: u32| match u32::from(self.bits) {
            0 => 0u128,
            b => u128::MAX << (width - b.min(width)),
        };
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let m = mask(32) as u32;
                u32::from(net) & m == u32::from(ip) & m
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let m = mask(128);
                u128::from(net) & m == u128::from(ip) & m
            }
            _ => false,
        }
    }
}

/// `forward_headers` of a route or provider at `path`.
pub(crate) fn forward_headers(
    c: &mut Check<'_>,
    path: &str,
    list: &[String],
) -> Vec<HeaderPattern> {
    let mut out = Vec::with_capacity(list.len());
    for (i, raw) in list.iter().enumerate() {
        let at = format!("{path}[{i}]");
        let lower = raw.to_ascii_lowercase();
        let (stem, prefix) = match lower.strip_suffix('*') {
            Some(stem) => (stem, true),
            None => (lower.as_str(), false),
        };
        if stem.is_empty() || !stem.bytes().all(is_tchar) {
            c.err(
                &at,
                format!(
                    "`{raw}` is not a header name (letters, digits and !#$%&'+-.^_`|~, optionally ending in `*`)"
                ),
            );
            continue;
        }
        let pattern = if prefix {
            HeaderPattern::Prefix(stem.to_string())
        } else {
            HeaderPattern::Exact(stem.to_string())
        };
        match NEVER_FORWARDED.iter().find(|n| pattern.matches(n)) {
            Some(n) if !prefix => c.err(
                &at,
                format!("`{n}` is never forwarded (a hop-by-hop, credential, account or gateway-owned header)"),
            ),
            Some(n) => c.err(
                &at,
                format!("`{raw}` would forward `{n}`, which is never forwarded; list the headers one by one"),
            ),
            None => out.push(pattern),
        }
    }
    out
}

/// RFC 9110 `tchar` except `*`, which ends a prefix pattern.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'+-.^_`|~".contains(&b)
}

/// `server.trusted_proxies`.
pub(crate) fn trusted_proxies(c: &mut Check<'_>, list: &[String]) -> Vec<Cidr> {
    let mut out = Vec::with_capacity(list.len());
    for (i, s) in list.iter().enumerate() {
        match Cidr::parse(s) {
            Some(n) => out.push(n),
            None => c.err(
                &format!("server.trusted_proxies[{i}]"),
                format!("`{s}` is not an IP address or CIDR block (e.g. 10.0.0.0/8, fd00::/8)"),
            ),
        }
    }
    out
}

/// A provider account header's value (`organization`, `project`, `workspace`): interpolated, and
/// visible ASCII so it can be sent as a header.
pub(crate) fn account_value(
    c: &mut Check<'_>,
    provider: &str,
    field: &str,
    raw: Option<&String>,
) -> Option<String> {
    let path = format!("{provider}.{field}");
    let v = c.interpolated(&path, raw?)?;
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_graphic()) {
        c.err(
            &path,
            format!("`{field}` must be non-empty visible ASCII (it is sent as a header)"),
        );
        return None;
    }
    Some(v)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cidr_membership() {
        let net = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.0.9".parse().unwrap()));
        let one = Cidr::parse("127.0.0.1").unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.contains("192.0.2.1".parse().unwrap()));
        assert!(!all.contains("2001:db8::1".parse().unwrap()));
        let v6 = Cidr::parse("fd00::/8").unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("fe80::1".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(Cidr::parse("10.0.0/8").is_none());
    }

    #[test]
    fn header_patterns() {
        assert!(HeaderPattern::Prefix("x-stub-".into()).matches("x-stub-fault"));
        assert!(!HeaderPattern::Exact("x-stub".into()).matches("x-stub-fault"));
    }
}
