//! The upstream request's head, written straight into its HTTP/1.1 bytes.
//!
//! Why not a Pingora `RequestHeader`: the gateway built one per attempt only to serialize it at once
//! (`http_req_header_to_wire`). Filling its `http::HeaderMap` (a hash and a bucket per header, the
//! `insert`s' look-ups) and dropping it again cost about 5,000 instructions a request (issue 19,
//! callgrind of the bench's full chain), several times what writing the same lines costs.
//!
//! The bytes are the ones Pingora wrote: `METHOD SP target SP HTTP/1.1`, then a `name: value` line a
//! header, the common names titled as Pingora titles them (`Host`, `Content-Length`, ...), the rest
//! as `http` spells them (lower case). The blank line that ends the head is added when it is sent
//! ([`UpstreamHead::wire`]). Names and values come as `http` types, so each is already valid (but
//! for an attempt's `traceparent`, bytes the gateway wrote itself); the request target is checked
//! as Pingora checks it.

use http::header::{self, HeaderName, HeaderValue};
use http::Method;
use leaky_wire::trace_context::TRACEPARENT_LEN;

/// A request head ready to send: its request line and header lines.
#[derive(Debug, Clone)]
pub struct UpstreamHead {
    method: Method,
    /// The request line and every header line, each ending in CRLF.
    buf: Vec<u8>,
}

/// A request target that cannot go on the wire (empty, or with a NUL, CR, LF or space).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadTarget;

impl std::fmt::Display for BadTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request target is empty or has a control character or a space")
    }
}

impl UpstreamHead {
    /// A head of `method` on `target` (path and query), with room for `headers` bytes of header lines.
    pub fn new(method: Method, target: &[u8], headers: usize) -> Result<Self, BadTarget> {
        if target.is_empty() || target.iter().any(|b| matches!(b, 0 | b'\r' | b'\n' | b' ')) {
            return Err(BadTarget);
        }
        let m = method.as_str().as_bytes();
        let mut buf = Vec::with_capacity(m.len() + target.len() + 12 + headers + 2);
        buf.extend_from_slice(m);
        buf.push(b' ');
        buf.extend_from_slice(target);
        buf.extend_from_slice(b" HTTP/1.1\r\n");
        Ok(UpstreamHead { method, buf })
    }

    /// Adds a `name: value` line (after any of the same name).
    pub fn append(&mut self, name: &HeaderName, value: &HeaderValue) {
        let n = titled(name).unwrap_or(name.as_str()).as_bytes();
        self.line(n, value.as_bytes());
    }

    /// Adds a traced attempt's `traceparent` line: the 55 bytes the gateway wrote itself
    /// (`SpanContext::traceparent_bytes`, lower-case hex digits and dashes), so neither a
    /// `HeaderValue` nor a check is needed. The head carries no other `traceparent`:
    /// `request::upstream_head` leaves the caller's out of a traced request's head, so this is a
    /// plain append rather than a search of the head's lines for one to replace (issue 19).
    pub fn append_traceparent(&mut self, tp: &[u8; TRACEPARENT_LEN]) {
        self.line(b"traceparent", tp);
    }

    fn line(&mut self, name: &[u8], value: &[u8]) {
        self.buf.reserve(name.len() + value.len() + 4);
        self.buf.extend_from_slice(name);
        self.buf.extend_from_slice(b": ");
        self.buf.extend_from_slice(value);
        self.buf.extend_from_slice(b"\r\n");
    }

    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The head as sent, with its closing blank line, then `body` (pass an empty one to send the
    /// body apart).
    pub fn wire(&self, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.buf.len() + 2 + body.len());
        out.extend_from_slice(&self.buf);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(body);
        out
    }
}

/// Pingora's titled spelling of the common names (`pingora_http`'s `titled_header_name_str`), so the
/// bytes on the wire stay what they were.
fn titled(name: &HeaderName) -> Option<&'static str> {
    Some(match *name {
        header::ACCEPT_RANGES => "Accept-Ranges",
        header::AGE => "Age",
        header::CACHE_CONTROL => "Cache-Control",
        header::CONNECTION => "Connection",
        header::CONTENT_TYPE => "Content-Type",
        header::CONTENT_ENCODING => "Content-Encoding",
        header::CONTENT_LENGTH => "Content-Length",
        header::DATE => "Date",
        header::TRANSFER_ENCODING => "Transfer-Encoding",
        header::HOST => "Host",
        header::SERVER => "Server",
        header::SET_COOKIE => "Set-Cookie",
        _ => return None,
    })
}

/// Reading a head back: what the tests check.
#[cfg(test)]
impl UpstreamHead {
    /// Where the first header line starts: after the request line (its target holds no LF).
    fn first_header(&self) -> usize {
        memchr::memchr(b'\n', &self.buf).map_or(self.buf.len(), |p| p + 1)
    }

    /// The request target: the path and the query (between the method and ` HTTP/1.1`; it holds
    /// no space).
    pub fn target(&self) -> &[u8] {
        let line = &self.buf[..self.first_header()];
        let start = self.method.as_str().len() + 1;
        &line[start..line.len() - b" HTTP/1.1\r\n".len()]
    }

    /// The target's path (before any `?`).
    pub fn path(&self) -> &str {
        let t = self.target();
        let path = t.split(|b| *b == b'?').next().unwrap_or(t);
        std::str::from_utf8(path).unwrap_or("")
    }

    /// Every header as `(name as written, value)`, in order.
    pub fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.buf[self.first_header()..]
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| {
                let l = l.strip_suffix(b"\r").unwrap_or(l);
                let name = line_name(l);
                let value = l.get(name.len() + 2..).unwrap_or_default();
                (name, value)
            })
    }

    /// The first value of `name` (any case).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.headers()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }
}

/// The name of a header line (`name: value`).
#[cfg(test)]
fn line_name(line: &[u8]) -> &[u8] {
    let end = line.iter().position(|b| *b == b':').unwrap_or(line.len());
    &line[..end]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn v(s: &'static str) -> HeaderValue {
        HeaderValue::from_static(s)
    }

    /// What Pingora wrote for the same head, built header by header without a case map.
    fn pingora_wire(
        method: Method,
        target: &[u8],
        headers: &[(HeaderName, HeaderValue)],
    ) -> Vec<u8> {
        let mut head = pingora::http::RequestHeader::build_no_case(method, target, None).unwrap();
        for (n, v) in headers {
            head.append_header(n.clone(), v.clone()).unwrap();
        }
        let wire = pingora::protocols::http::v1::client::http_req_header_to_wire(&head).unwrap();
        wire.to_vec()
    }

    #[test]
    fn writes_the_bytes_pingora_wrote() {
        let x_key = HeaderName::from_static("x-goog-api-key");
        let headers = [
            (header::CONTENT_TYPE, v("application/json")),
            (header::ACCEPT, v("*/*")),
            (header::HOST, v("api.example.com:443")),
            (x_key.clone(), v("k-1")),
            (x_key.clone(), v("k-2")),
            (header::CONTENT_LENGTH, v("17")),
        ];
        let mut head = UpstreamHead::new(Method::POST, b"/v1/chat?a=1", 64).unwrap();
        for (n, val) in &headers {
            head.append(n, val);
        }
        let want = pingora_wire(Method::POST, b"/v1/chat?a=1", &headers);
        assert_eq!(
            String::from_utf8_lossy(&head.wire(b"")),
            String::from_utf8_lossy(&want)
        );
        let body = head.wire(b"{}");
        assert!(body.ends_with(b"\r\n\r\n{}"), "{body:?}");
    }

    #[test]
    fn reads_back_method_target_path_and_headers() {
        let mut head = UpstreamHead::new(Method::GET, b"/v1/models/x?alt=sse", 0).unwrap();
        head.append(&header::HOST, &v("h"));
        head.append(&header::ACCEPT, &v("a, b"));
        head.append(&header::ACCEPT, &v("c"));
        assert_eq!(head.method(), Method::GET);
        assert_eq!(head.target(), b"/v1/models/x?alt=sse");
        assert_eq!(head.path(), "/v1/models/x");
        let all: Vec<_> = head.headers().collect();
        assert_eq!(
            all,
            vec![
                (&b"Host"[..], &b"h"[..]),
                (&b"accept"[..], &b"a, b"[..]),
                (&b"accept"[..], &b"c"[..]),
            ]
        );
        assert_eq!(head.get("HOST"), Some(&b"h"[..]));
        assert_eq!(head.get("accept"), Some(&b"a, b"[..]));
        assert_eq!(head.get("traceparent"), None);
    }

    #[test]
    fn a_traceparent_is_one_line_after_the_rest() {
        let tp: [u8; TRACEPARENT_LEN] = *b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let mut head = UpstreamHead::new(Method::POST, b"/v1/chat", 0).unwrap();
        head.append(&header::HOST, &v("h"));
        head.append(&HeaderName::from_static("traceparent-x"), &v("kept"));
        head.append_traceparent(&tp);
        assert_eq!(
            head.headers().collect::<Vec<_>>(),
            vec![
                (&b"Host"[..], &b"h"[..]),
                (&b"traceparent-x"[..], &b"kept"[..]),
                (&b"traceparent"[..], &tp[..]),
            ]
        );
        // The same bytes as the checked path would write.
        let mut checked = UpstreamHead::new(Method::POST, b"/v1/chat", 0).unwrap();
        checked.append(&header::HOST, &v("h"));
        checked.append(&HeaderName::from_static("traceparent-x"), &v("kept"));
        checked.append(
            &HeaderName::from_static("traceparent"),
            &HeaderValue::from_bytes(&tp).unwrap(),
        );
        assert_eq!(head.wire(b""), checked.wire(b""));
    }

    #[test]
    fn refuses_a_target_pingora_refuses() {
        for bad in [&b""[..], b"/a b", b"/a\r\n", b"/\0"] {
            assert_eq!(
                UpstreamHead::new(Method::GET, bad, 0).unwrap_err(),
                BadTarget
            );
        }
    }
}
