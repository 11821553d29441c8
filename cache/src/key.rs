//! The canonical cache key of a request: SHA-256 over a versioned, unambiguous form of everything
//! that can change the answer, scoped to the tenant.
//!
//! What goes in, in this order, each field length-prefixed so no two different requests frame the
//! same bytes:
//!
//! 1. [`KEY_VERSION`] (a change of this form changes every key: old entries simply stop matching);
//! 2. the tenant ([`Tenant`]): its kind and id, so two tenants never share a key — not even an org
//!    and a key that happen to have the same name;
//! 3. the route name, the method, the path after the route prefix (for Gemini native it carries the
//!    model and the method, `models/gemini-2.0-flash:streamGenerateContent`), and the model the proxy
//!    routes with;
//! 4. the query string minus credentials (`key=`) with its parameters sorted;
//! 5. the request headers that change the answer's form ([`ANSWER_HEADERS`]);
//! 6. the JSON body in canonical form ([`canonical_json`]): object keys sorted, no whitespace, every
//!    number in one spelling (`0`, `0.0`, `-0.0` and `0e0` are one value), strings re-escaped
//!    minimally. Top-level fields that cannot change the answer are left out ([`IGNORED_FIELDS`]).
//!
//! Everything else in the body stays: the model, messages / contents / input, tools and
//! tool_choice, every sampling parameter, response_format, seed, stream and stream_options, n, the
//! token caps, `store`, `service_tier`, `previous_response_id`... A field we do not know is kept:
//! an unknown field costs at worst a miss, a wrongly dropped one a wrong answer.

use crate::Key;
use leaky_config::CacheScope;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::fmt::Write as _;

/// Version of the canonical form; part of every key.
pub const KEY_VERSION: &str = "leaky-cache-key/v1";

/// Top-level body fields left out of the key, because they label a request without changing its
/// answer:
///
/// - `user`, `safety_identifier` (OpenAI): the caller's end user, for the provider's abuse
///   monitoring;
/// - `metadata` (OpenAI): tags stored with the completion, never fed to the model;
/// - `prompt_cache_key` (OpenAI): a routing hint for the provider's own prompt cache;
/// - `labels` (Gemini on Vertex): billing labels.
///
/// `store` is kept: with `store: true` the answer's id can be fetched (or continued from) later, so
/// a stored and an unstored answer are not interchangeable.
pub const IGNORED_FIELDS: &[&str] = &[
    "user",
    "safety_identifier",
    "metadata",
    "prompt_cache_key",
    "labels",
];

/// Query parameters left out of the key: credentials (Gemini's `?key=`). Never stored, never hashed.
pub const IGNORED_QUERY: &[&str] = &["key"];

/// Request headers that change the form of the answer, so they are part of the key:
/// `x-dashscope-sse: enable` turns a DashScope native answer into an SSE stream, and `openai-beta`
/// selects API versions with different shapes.
pub const ANSWER_HEADERS: &[&str] = &["x-dashscope-sse", "openai-beta"];

/// Whose answers an entry may be served to (the route's `scope`, resolved for one principal).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Tenant<'a> {
    /// Everyone in the org.
    Org(&'a str),
    /// One API key (or one JWT's id): also the fallback of a principal without an org.
    Key(&'a str),
    /// One user within one org.
    User { org: &'a str, user: &'a str },
}

impl<'a> Tenant<'a> {
    /// The tenant of a principal under `scope`. A principal without an org shares with nobody but
    /// its own key id, whatever the scope (a user id alone is not known to be unique across keys
    /// without an org). `None` when there is no principal at all (a route without auth): such a
    /// request is not cached.
    pub fn resolve(
        scope: CacheScope,
        org: Option<&'a str>,
        key_id: Option<&'a str>,
        user: Option<&'a str>,
    ) -> Option<Tenant<'a>> {
        let org = org.filter(|o| !o.is_empty());
        let key_id = key_id.filter(|k| !k.is_empty());
        match (scope, org, user.filter(|u| !u.is_empty())) {
            (CacheScope::Org, Some(org), _) => Some(Tenant::Org(org)),
            (CacheScope::User, Some(org), Some(user)) => Some(Tenant::User { org, user }),
            _ => key_id.map(Tenant::Key),
        }
    }
}

/// Everything the key is computed from. `body` is the request's JSON body as the caller sent it
/// (before the gateway adds anything, such as a usage option or a token cap).
#[derive(Clone, Copy, Debug)]
pub struct KeyParts<'a> {
    pub tenant: Tenant<'a>,
    pub route: &'a str,
    pub method: &'a str,
    /// The path after the route prefix.
    pub path: &'a str,
    /// The raw query string, without `?`.
    pub query: Option<&'a str>,
    /// The model the proxy routes with (also in the body or the path; named apart so that a proxy
    /// that resolves aliases keys on what it resolved).
    pub model: Option<&'a str>,
    pub headers: &'a http::HeaderMap,
    pub body: &'a Value,
}

/// The cache key of a request.
pub fn request_key(parts: &KeyParts<'_>) -> Key {
    let mut h = Hasher(Sha256::new());
    h.field(KEY_VERSION.as_bytes());
    match parts.tenant {
        Tenant::Org(org) => h.fields(&[b"org", org.as_bytes()]),
        Tenant::Key(id) => h.fields(&[b"key", id.as_bytes()]),
        Tenant::User { org, user } => h.fields(&[b"user", org.as_bytes(), user.as_bytes()]),
    }
    h.fields(&[
        parts.route.as_bytes(),
        parts.method.as_bytes(),
        parts.path.as_bytes(),
        parts.model.unwrap_or("").as_bytes(),
    ]);
    query(&mut h, parts.query.unwrap_or(""));
    for name in ANSWER_HEADERS {
        let values = parts.headers.get_all(*name);
        h.field(&(values.iter().count() as u64).to_be_bytes());
        for v in values {
            h.field(v.as_bytes());
        }
    }
    h.field(b"body");
    write_value(&mut h, parts.body, true);
    Key(h.0.finalize().into())
}

/// The query's parameters but credentials, sorted (their order never changes the answer).
fn query(h: &mut Hasher, q: &str) {
    let mut params: Vec<&str> = q
        .split('&')
        .filter(|p| !p.is_empty())
        .filter(|p| {
            let name = p.split_once('=').map_or(*p, |(n, _)| n);
            !IGNORED_QUERY.contains(&name)
        })
        .collect();
    params.sort_unstable();
    h.field(&(params.len() as u64).to_be_bytes());
    for p in params {
        h.field(p.as_bytes());
    }
}

/// The canonical JSON text of `body` as it is hashed (top-level [`IGNORED_FIELDS`] left out): for
/// tests, logs and anyone who wants to see why two requests share a key.
pub fn canonical_json(body: &Value) -> String {
    let mut out = Text(String::new());
    write_value(&mut out, body, true);
    out.0
}

/// Where canonical bytes go: the hasher, or a string for [`canonical_json`].
trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

struct Hasher(Sha256);

impl Hasher {
    /// One length-prefixed field.
    fn field(&mut self, bytes: &[u8]) {
        self.0.update((bytes.len() as u64).to_be_bytes());
        self.0.update(bytes);
    }

    fn fields(&mut self, fields: &[&[u8]]) {
        for f in fields {
            self.field(f);
        }
    }
}

impl Sink for Hasher {
    fn put(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

struct Text(String);

impl Sink for Text {
    fn put(&mut self, bytes: &[u8]) {
        // Only ever whole UTF-8 sequences (JSON text and numbers) are put.
        self.0.push_str(&String::from_utf8_lossy(bytes));
    }
}

/// `fmt::Write` into a sink, so numbers are formatted without an allocation.
struct Fmt<'a, S: Sink>(&'a mut S);

impl<S: Sink> std::fmt::Write for Fmt<'_, S> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.put(s.as_bytes());
        Ok(())
    }
}

fn write_value<S: Sink>(out: &mut S, v: &Value, top: bool) {
    match v {
        Value::Null => out.put(b"null"),
        Value::Bool(true) => out.put(b"true"),
        Value::Bool(false) => out.put(b"false"),
        Value::Number(n) => write_number(out, n),
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.put(b"[");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.put(b",");
                }
                write_value(out, item, false);
            }
            out.put(b"]");
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map
                .iter()
                .filter(|(k, _)| !(top && IGNORED_FIELDS.contains(&k.as_str())))
                .collect();
            // serde_json's map may keep insertion order (feature `preserve_order`): sort regardless.
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.put(b"{");
            for (i, (k, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.put(b",");
                }
                write_string(out, k);
                out.put(b":");
                write_value(out, item, false);
            }
            out.put(b"}");
        }
    }
}

/// Integral f64s below this are written as integers (an `i128` holds them exactly).
const INTEGRAL_BELOW: f64 = 1e38;

/// One spelling per value: an integral number is an integer (`2.0`, `2e0` → `2`; `-0.0` → `0`;
/// `1e20` → `100000000000000000000`), any other the shortest text that reads back to the same f64.
fn write_number<S: Sink>(out: &mut S, n: &serde_json::Number) {
    let mut w = Fmt(out);
    let _ = if let Some(i) = n.as_i64() {
        write!(w, "{i}")
    } else if let Some(u) = n.as_u64() {
        write!(w, "{u}")
    } else {
        let f = n.as_f64().unwrap_or(f64::NAN);
        if f.fract() == 0.0 && f.abs() < INTEGRAL_BELOW {
            write!(w, "{}", f as i128)
        } else {
            write!(w, "{f:?}")
        }
    };
}

/// A JSON string with the minimal escapes (`"`, `\` and control characters), so every spelling of
/// the same string (`"é"`, `"\u00e9"`) is one.
fn write_string<S: Sink>(out: &mut S, s: &str) {
    out.put(b"\"");
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: Option<&[u8]> = match b {
            b'"' => Some(b"\\\""),
            b'\\' => Some(b"\\\\"),
            b'\n' => Some(b"\\n"),
            b'\r' => Some(b"\\r"),
            b'\t' => Some(b"\\t"),
            0..=0x1f => None,
            _ => continue,
        };
        out.put(&bytes[start..i]);
        match escape {
            Some(e) => out.put(e),
            None => {
                let _ = write!(Fmt(out), "\\u{b:04x}");
            }
        }
        start = i + 1;
    }
    out.put(&bytes[start..]);
    out.put(b"\"");
}

#[cfg(test)]
mod tests;
