//! Validation of what crosses the gateway (`model::forwarding`): `forward_headers` of routes and
//! providers, `server.trusted_proxies`, and the provider account header values. Each rule has an invalid
//! fixture in `config/tests/invalid/`.

use crate::model::{Cidr, HeaderPattern, NEVER_FORWARDED};
use crate::validate::Check;

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
