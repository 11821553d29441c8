//! Which headers cross the gateway. Requests: an allow-list per route and provider, compiled once per
//! config version (the dialect's defaults plus `forward_headers`); never a header named in the
//! request's `Connection`; `X-Forwarded-For` / `Forwarded` from the real peer. Responses: everything
//! but hop-by-hop headers, what a provider sets for its own origin or account, and the stubs'
//! `x-stub-*` diagnostics (unless `forward_headers` lets them back).
//!
//! Credentials, the provider account headers (`OpenAI-Organization`, …), `Host`, framing and
//! `x-request-id` are set by the caller of this module from the deployment and the request context.

use bytes::Bytes;
use http::header::{GetAll, HeaderMap, HeaderName, HeaderValue, CONNECTION};
use http::StatusCode;
use leaky_config::{Cidr, Dialect, HeaderPattern};
use pingora::http::ResponseHeader;
use std::collections::HashSet;
use std::net::IpAddr;

/// Request headers every dialect forwards: what the body is and what the caller accepts, the caller's
/// client, W3C trace context.
const COMMON: &[&str] = &[
    "content-type",
    "accept",
    "user-agent",
    "traceparent",
    "tracestate",
];
/// What the OpenAI SDKs send beyond those: `OpenAI-Beta` selects API betas (`assistants=v2`);
/// `x-stainless-*` are the SDKs' telemetry (language, runtime, retry count, timeout).
const OPENAI: &[&str] = &["openai-beta", "x-stainless-*"];
/// google-genai: `x-goog-api-client` (SDK telemetry) and `x-server-timeout` (the caller's deadline).
const GOOGLE: &[&str] = &["x-goog-api-client", "x-server-timeout"];
/// The DashScope SDK: `X-DashScope-SSE: enable` asks for a stream.
const DASHSCOPE: &[&str] = &["x-dashscope-sse"];

/// The dialect's default request headers, as written in the README.
pub fn defaults(dialect: Dialect) -> impl Iterator<Item = &'static str> {
    let own = match dialect {
        Dialect::Openai => OPENAI,
        Dialect::Google => GOOGLE,
        Dialect::Dashscope => DASHSCOPE,
    };
    COMMON.iter().chain(own).copied()
}

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// The request id, on the upstream request and on every answer.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The header policy of one route towards one provider.
pub struct HeaderPolicy {
    /// Request headers forwarded by exact name; looked up for each header of each request, so
    /// hashed with foldhash (SipHash cost ~300 instructions a lookup, 2,200 per request with the
    /// OpenAI SDK's headers). The names come from the config, not from callers.
    names: HashSet<HeaderName, foldhash::fast::RandomState>,
    /// Request headers forwarded by prefix (lower case).
    prefixes: Box<[Box<str>]>,
    /// The route's and provider's `forward_headers`: they also let matching `x-stub-*` response
    /// headers back.
    configured: Box<[HeaderPattern]>,
}

impl HeaderPolicy {
    /// Compiles the dialect's defaults and both `forward_headers` lists (validated by the config crate:
    /// none of them can name a header in `NEVER_FORWARDED`).
    pub fn new(dialect: Dialect, route: &[HeaderPattern], provider: &[HeaderPattern]) -> Self {
        let mut names = HashSet::default();
        let mut prefixes = Vec::new();
        let mut add = |p: HeaderPattern| match p {
            HeaderPattern::Exact(n) => {
                if let Ok(name) = HeaderName::from_bytes(n.as_bytes()) {
                    names.insert(name);
                }
            }
            HeaderPattern::Prefix(p) => prefixes.push(p.into_boxed_str()),
        };
        for d in defaults(dialect) {
            add(match d.strip_suffix('*') {
                Some(p) => HeaderPattern::Prefix(p.to_string()),
                None => HeaderPattern::Exact(d.to_string()),
            });
        }
        let configured: Box<[HeaderPattern]> = route.iter().chain(provider).cloned().collect();
        for p in configured.iter() {
            add(p.clone());
        }
        HeaderPolicy {
            names,
            prefixes: prefixes.into_boxed_slice(),
            configured,
        }
    }

    /// Whether the caller's header `name` goes to the provider (before the `Connection` check).
    pub fn forwards(&self, name: &HeaderName) -> bool {
        self.names.contains(name)
            || self
                .prefixes
                .iter()
                .any(|p| name.as_str().starts_with(&**p))
    }

    /// Whether the provider's response header `name` goes back to the caller (before the
    /// `Connection` check).
    pub fn returns(&self, name: &HeaderName) -> bool {
        self.returns_name(name.as_str().as_bytes())
    }

    /// [`HeaderPolicy::returns`] of a lower-case name.
    fn returns_name(&self, n: &[u8]) -> bool {
        if never_returned(n) {
            return false;
        }
        // The stubs' diagnostics (one echoes the credential the gateway sent).
        !n.starts_with(b"x-stub-")
            || (!self.configured.is_empty()
                && std::str::from_utf8(n)
                    .is_ok_and(|n| self.configured.iter().any(|p| p.matches(n))))
    }
}

/// The response headers one route gives back from one provider.
#[derive(Clone, Copy)]
pub struct Returned<'a> {
    pub policy: &'a HeaderPolicy,
    /// The gateway writes its own limit headers: the provider's describe the gateway's upstream
    /// key and would contradict them.
    pub own_limits: bool,
}

impl Returned<'_> {
    /// Whether the provider's header `name` goes back to the caller (before the `Connection`
    /// check).
    pub fn keeps(&self, name: &HeaderName) -> bool {
        self.keeps_name(name.as_str().as_bytes())
    }

    fn keeps_name(&self, n: &[u8]) -> bool {
        self.policy.returns_name(n) && !(self.own_limits && is_limit_header(n))
    }

    /// Whether the header named `raw`, as received in any case, is one [`Returned::keeps`] drops.
    /// The upstream reader leaves such headers out of a successful answer's head rather than
    /// parse names and values only to drop them (`false` when unsure: a name over 64 bytes).
    pub fn drops(&self, raw: &[u8]) -> bool {
        let mut buf = [0u8; 64];
        let Some(lower) = buf.get_mut(..raw.len()) else {
            return false;
        };
        lower.copy_from_slice(raw);
        lower.make_ascii_lowercase();
        !self.keeps_name(lower)
    }
}

/// Rate-limit standing headers (OpenAI `x-ratelimit-*`, IETF `ratelimit*`), lower case. A
/// provider's own `retry-after` on its 429 still reaches the caller.
fn is_limit_header(n: &[u8]) -> bool {
    n.starts_with(b"x-ratelimit-") || n.starts_with(b"ratelimit")
}

/// Response headers that only matter between the gateway and the provider: hop-by-hop headers
/// (framing is redone for the caller), cookies and origin-wide policies the provider sets for its own
/// origin, and the provider account the gateway used.
fn never_returned(name: &[u8]) -> bool {
    matches!(
        name,
        b"connection"
            | b"keep-alive"
            | b"proxy-connection"
            | b"proxy-authenticate"
            | b"te"
            | b"trailer"
            | b"transfer-encoding"
            | b"upgrade"
            | b"set-cookie"
            | b"set-cookie2"
            | b"alt-svc"
            | b"strict-transport-security"
            | b"openai-organization"
            | b"openai-project"
            | b"x-dashscope-workspace"
    )
}

/// The header names one message lists in `Connection` (hop-by-hop for that message).
pub struct ConnectionNamed<'a>(Option<GetAll<'a, HeaderValue>>);

impl<'a> ConnectionNamed<'a> {
    pub fn of(headers: &'a HeaderMap) -> Self {
        ConnectionNamed(
            headers
                .contains_key(CONNECTION)
                .then(|| headers.get_all(CONNECTION)),
        )
    }

    pub fn contains(&self, name: &HeaderName) -> bool {
        let Some(all) = &self.0 else { return false };
        let name = name.as_str().as_bytes();
        all.iter().any(|v| {
            v.as_bytes()
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(name))
        })
    }
}

/// A response head for Pingora from a header map filled directly. Pingora's `append_header` turns
/// each name into a case-preserving copy and parses it back into a `HeaderName`; a map built with
/// `http`'s own `append`/`insert` clones names and values (reference counts) and is handed over
/// whole. Like `ResponseHeader::build_no_case`, the head keeps no case map: Pingora writes the names
/// as `http` holds them (titling the common ones), in the map's order.
pub fn response_head(status: StatusCode, headers: HeaderMap) -> ResponseHeader {
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = status;
    parts.headers = headers;
    ResponseHeader::from(parts)
}

/// `X-Forwarded-For` and `Forwarded` for the upstream request. A peer in `trusted` is a proxy
/// reporting its own client: the chain it sent is kept and the peer appended. Any other peer is the
/// client, and what it sent about addresses is replaced by its own address. One buffer per header,
/// handed to the `HeaderValue` without a copy.
pub fn forwarded_for(
    client: &HeaderMap,
    peer: IpAddr,
    trusted: &[Cidr],
) -> (Option<HeaderValue>, Option<HeaderValue>) {
    use std::io::Write;
    let peer = peer.to_canonical();
    let keep = trusted.iter().any(|n| n.contains(peer));
    let mut xff = received(keep, client, "x-forwarded-for");
    let mut fwd = received(keep, client, "forwarded");
    match peer {
        // Dotted quads without `fmt` (its machinery was half of this function's cost).
        IpAddr::V4(v4) => {
            push_ipv4(&mut xff, v4);
            fwd.extend_from_slice(b"for=");
            push_ipv4(&mut fwd, v4);
        }
        // Writing into a Vec cannot fail.
        IpAddr::V6(_) => {
            let _ = write!(xff, "{peer}");
            let _ = write!(fwd, "for=\"[{peer}]\"");
        }
    }
    let value = |b: Vec<u8>| HeaderValue::from_maybe_shared(Bytes::from(b)).ok();
    (value(xff), value(fwd))
}

/// `a.b.c.d`, as `Ipv4Addr`'s `Display` writes it.
fn push_ipv4(out: &mut Vec<u8>, ip: std::net::Ipv4Addr) {
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            out.push(b'.');
        }
        if octet >= 100 {
            out.push(b'0' + octet / 100);
        }
        if octet >= 10 {
            out.push(b'0' + octet / 10 % 10);
        }
        out.push(b'0' + octet % 10);
    }
}

/// The values of `name` the caller sent, joined by `, ` and ready for one more entry (empty unless
/// `keep`).
fn received(keep: bool, client: &HeaderMap, name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(48);
    if keep {
        for v in client.get_all(name).iter().filter(|v| !v.is_empty()) {
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b", ");
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn name(s: &'static str) -> HeaderName {
        HeaderName::from_static(s)
    }

    #[test]
    fn defaults_never_name_a_header_the_gateway_owns() {
        for d in [Dialect::Openai, Dialect::Google, Dialect::Dashscope] {
            for h in defaults(d) {
                let p = match h.strip_suffix('*') {
                    Some(p) => HeaderPattern::Prefix(p.into()),
                    None => HeaderPattern::Exact(h.into()),
                };
                assert!(
                    !leaky_config::NEVER_FORWARDED.iter().any(|n| p.matches(n)),
                    "{h}"
                );
            }
        }
    }

    #[test]
    fn allow_list_per_dialect_plus_configured() {
        let route = [HeaderPattern::Prefix("x-stub-".into())];
        let p = HeaderPolicy::new(Dialect::Openai, &route, &[]);
        assert!(p.forwards(&name("content-type")));
        assert!(p.forwards(&name("x-stainless-os")));
        assert!(p.forwards(&name("x-stub-fault")));
        assert!(!p.forwards(&name("openai-organization")));
        assert!(!p.forwards(&name("x-foo")));
        assert!(!p.forwards(&name("x-dashscope-sse")));
        assert!(p.returns(&name("x-stub-saw-path")));
        let g = HeaderPolicy::new(Dialect::Google, &[], &[]);
        assert!(g.forwards(&name("x-goog-api-client")));
        assert!(!g.forwards(&name("x-stainless-os")));
        assert!(!g.returns(&name("x-stub-saw-authorization")));
        assert!(!g.returns(&name("set-cookie")));
        assert!(g.returns(&name("openai-processing-ms")));
    }

    /// What the upstream reader leaves out of a head is what the relay would drop, in any case.
    #[test]
    fn dropped_names_are_the_ones_not_kept() {
        let route = [HeaderPattern::Prefix("x-stub-saw-".into())];
        let p = HeaderPolicy::new(Dialect::Openai, &route, &[]);
        let names = [
            "content-type",
            "x-request-id",
            "openai-processing-ms",
            "x-ratelimit-remaining-tokens",
            "ratelimit-policy",
            "set-cookie",
            "openai-organization",
            "x-stub-saw-path",
            "x-stub-latency",
            "retry-after",
        ];
        for own_limits in [false, true] {
            let r = Returned {
                policy: &p,
                own_limits,
            };
            for n in names {
                let keeps = r.keeps(&name(n));
                assert_eq!(
                    r.drops(n.as_bytes()),
                    !keeps,
                    "{n} (own limits {own_limits})"
                );
                let upper = n.to_ascii_uppercase();
                assert_eq!(r.drops(upper.as_bytes()), !keeps, "{upper}");
            }
            let limit = name("x-ratelimit-remaining-tokens");
            assert_eq!(r.keeps(&limit), !own_limits);
        }
        let r = Returned {
            policy: &p,
            own_limits: true,
        };
        assert!(!r.keeps(&name("x-stub-latency")));
        assert!(r.keeps(&name("x-stub-saw-path")));
        // Unsure: a name too long to look at is not dropped by the reader (the relay still drops it).
        let long = format!("x-stub-{}", "x".repeat(64));
        assert!(!r.keeps(&HeaderName::from_bytes(long.as_bytes()).unwrap()));
        assert!(!r.drops(long.as_bytes()));
    }

    #[test]
    fn connection_named_headers() {
        let mut h = HeaderMap::new();
        assert!(!ConnectionNamed::of(&h).contains(&name("x-foo")));
        h.append(CONNECTION, "keep-alive, X-Foo".parse().unwrap());
        h.append(CONNECTION, "x-bar".parse().unwrap());
        let c = ConnectionNamed::of(&h);
        assert!(c.contains(&name("x-foo")));
        assert!(c.contains(&name("x-bar")));
        assert!(!c.contains(&name("x-baz")));
    }

    /// The heads built from a map are the ones `build_no_case` plus a header at a time made: same
    /// request line and status, same bytes on the wire (names, case, order, repeated values).
    #[test]
    fn response_heads_from_a_map_write_what_header_by_header_wrote() {
        let pairs: [(&str, &str); 6] = [
            ("content-type", "application/json"),
            ("x-stainless-os", "Linux"),
            ("accept", "*/*"),
            ("x-multi", "a"),
            ("x-multi", "b"),
            ("host", "api.example"),
        ];
        let mut map = HeaderMap::new();
        let mut resp = ResponseHeader::build_no_case(StatusCode::CREATED, None).unwrap();
        for (n, v) in pairs {
            map.append(n, HeaderValue::from_static(v));
            resp.append_header(n, v).unwrap();
        }
        let wire = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut b = Vec::new();
            f(&mut b);
            String::from_utf8(b).unwrap()
        };
        let built = response_head(StatusCode::CREATED, map);
        assert_eq!((built.status, built.version), (resp.status, resp.version));
        assert_eq!(built.get_reason_phrase(), resp.get_reason_phrase());
        assert_eq!(
            wire(&|b| built.header_to_h1_wire(b)),
            wire(&|b| resp.header_to_h1_wire(b))
        );
    }

    #[test]
    fn dotted_quads_as_display_writes_them() {
        for ip in [
            [0, 0, 0, 0],
            [255, 255, 255, 255],
            [10, 0, 9, 100],
            [1, 20, 199, 250],
        ] {
            let ip = std::net::Ipv4Addr::from(ip);
            let mut out = b"x".to_vec();
            push_ipv4(&mut out, ip);
            assert_eq!(out, format!("x{ip}").into_bytes());
        }
        for n in 0..=255u8 {
            let ip = std::net::Ipv4Addr::new(n, 255 - n, n / 3, n.wrapping_mul(7));
            let mut out = Vec::new();
            push_ipv4(&mut out, ip);
            assert_eq!(out, ip.to_string().into_bytes());
        }
    }

    #[test]
    fn forwarded_for_replaces_or_appends() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "203.0.113.9".parse().unwrap());
        h.insert("forwarded", "for=203.0.113.9".parse().unwrap());
        let peer: IpAddr = "10.0.0.7".parse().unwrap();
        let (xff, fwd) = forwarded_for(&h, peer, &[]);
        assert_eq!(xff.unwrap(), "10.0.0.7");
        assert_eq!(fwd.unwrap(), "for=10.0.0.7");
        let trusted = [Cidr::parse("10.0.0.0/8").unwrap()];
        let (xff, fwd) = forwarded_for(&h, peer, &trusted);
        assert_eq!(xff.unwrap(), "203.0.113.9, 10.0.0.7");
        assert_eq!(fwd.unwrap(), "for=203.0.113.9, for=10.0.0.7");
        let (_, fwd) = forwarded_for(&HeaderMap::new(), "2001:db8::1".parse().unwrap(), &[]);
        assert_eq!(fwd.unwrap(), "for=\"[2001:db8::1]\"");
    }
}
