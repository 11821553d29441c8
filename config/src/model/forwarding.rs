//! What crosses the gateway between caller and provider, as validated config: header patterns a route or
//! provider lets through (`forward_headers`), the headers the gateway never lets through whatever the
//! config says, and the peers trusted to report a client address (`server.trusted_proxies`). Checked by
//! `validate::forwarding`; the data plane compiles these once per config version
//! (`proxy/src/headers.rs`).

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
