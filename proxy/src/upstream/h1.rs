//! The upstream side of HTTP/1.1: one response read from a connection the request was written to.
//!
//! Why not Pingora's client session: it keeps every response header twice (an `http::HeaderMap`
//! and a case-preserving map of the names as sent), parsing each name again on the way. The gateway
//! never sends an upstream's header casing on (it builds the client's head from an allow-list,
//! `headers.rs`), and that double map was the largest single cost of a request (issue 19: 23,000
//! instructions to read the stubs' 13-header answer, more than the request's own rate limiting,
//! usage read and settlement together). Here each header is parsed once, straight into the map,
//! and that map, filtered in place, becomes the client's (`relay.rs`).
//!
//! Framing follows RFC 9112 §6.3: no body after `HEAD`, `1xx`, `204` and `304`;
//! `Transfer-Encoding` ending in `chunked` is read chunk by chunk (extensions and trailers
//! skipped); any other `Transfer-Encoding`, or neither it nor `Content-Length`, reads to the close.
//! `Content-Length` alongside `Transfer-Encoding` is dropped (§6.3 point 3), as Pingora does; one
//! that is not a number, or two that differ, fail the response. Informational answers (`100
//! Continue`, `103 Early Hints`) are skipped, `101` is returned as is (the gateway sends no
//! upgrades).
//!
//! A connection may carry another request when the answer kept it alive (HTTP/1.1 without
//! `Connection: close`, HTTP/1.0 with `keep-alive`), its body ended by its framing, and nothing
//! came after it.

use bytes::{Buf, Bytes, BytesMut};
use http::response::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Version};
use pingora::{Error, ErrorType, OrErr, Result};
use std::mem::MaybeUninit;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Most headers a response head may carry (Pingora's limit).
const MAX_HEADERS: usize = 256;
/// Largest response head accepted (Pingora's client limit).
const MAX_HEAD: usize = 1 << 20;
/// Largest trailer section skipped after a chunked body.
const MAX_TRAILERS: usize = 64 * 1024;
/// Room in a head's map for the headers the gateway adds when it becomes the client's: the request
/// id, the served model, eight rate-limit fields, `Transfer-Encoding`, the cache's.
const OWN_HEADERS: usize = 12;
/// What one read asks for at least.
const READ: usize = 16 * 1024;

/// A response whose head has been read from `stream`; its body is read with [`Response::read_body_bytes`].
pub struct Response<S> {
    stream: S,
    /// Read but not yet handed out.
    buf: BytesMut,
    /// Status, version and headers. Boxed: the response is moved a dozen times through the
    /// exchange's stages and results, and with the head inline each move was a `memcpy` call. Not a
    /// Pingora `ResponseHeader`: the relay takes the headers out to become the client's
    /// ([`Response::take_headers`]), which a `ResponseHeader` cannot give up without a copy.
    head: Box<Parts>,
    body: Body,
    /// The answer lets the connection carry another request (once its body has ended).
    keepalive: bool,
}

/// Where the body's framing stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    /// Bytes of a `Content-Length` body still to come.
    Length(u64),
    /// A chunked body.
    Chunked(Chunk),
    /// To the connection's close.
    Close,
    /// Ended.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// A chunk-size line is next.
    Size,
    /// Bytes of the current chunk still to come.
    Data(u64),
    /// The CRLF after a chunk's data is next.
    DataEnd,
    /// The trailer section after the last chunk is next.
    Trailers,
}

impl<S: AsyncRead + Unpin> Response<S> {
    /// Reads the response head to the request just written on `stream` (`head_request`: it was a
    /// `HEAD`), skipping informational answers. A successful (2xx) answer's head leaves out the
    /// headers `dropped` names (they are not parsed); framing headers are always read.
    pub async fn read(
        mut stream: S,
        head_request: bool,
        dropped: impl Fn(&[u8]) -> bool,
    ) -> Result<Self> {
        let mut buf = BytesMut::with_capacity(READ);
        loop {
            let parsed = match buf.is_empty() {
                true => None,
                false => parse_head(&mut buf, head_request, &dropped)?,
            };
            if let Some((head, body, keepalive)) = parsed {
                if head.status.is_informational() && head.status != StatusCode::SWITCHING_PROTOCOLS
                {
                    continue;
                }
                let mut r = Response {
                    stream,
                    buf,
                    head,
                    body,
                    keepalive,
                };
                r.advance()?;
                return Ok(r);
            }
            if buf.len() >= MAX_HEAD {
                return Error::e_explain(
                    ErrorType::InvalidHTTPHeader,
                    "the upstream's response head is too large",
                );
            }
            if fill(&mut stream, &mut buf).await? == 0 {
                return Error::e_explain(
                    ErrorType::ConnectionClosed,
                    "the upstream closed the connection before a response head",
                );
            }
        }
    }

    /// The response's status, version and headers (no headers after [`Response::take_headers`]).
    pub fn head(&self) -> &Parts {
        &self.head
    }

    /// The headers, moved out (the head keeps its status): the relay filters them in place into
    /// the client's rather than copy the kept ones into another map.
    pub fn take_headers(&mut self) -> HeaderMap {
        std::mem::take(&mut self.head.headers)
    }

    /// The body has ended (nothing more will be read).
    pub fn is_body_done(&self) -> bool {
        self.body == Body::Done
    }

    /// The next bytes of the body as they arrive; `None` once it has ended. Everything the buffer
    /// already holds comes at once, across chunk boundaries ([`Response::gather`]).
    pub async fn read_body_bytes(&mut self) -> Result<Option<Bytes>> {
        loop {
            if let Some(out) = self.take()? {
                return Ok(Some(self.gather(out)));
            }
            if self.body == Body::Done {
                return Ok(None);
            }
            if fill(&mut self.stream, &mut self.buf).await? == 0 {
                if self.body == Body::Close {
                    self.body = Body::Done;
                    return Ok(None);
                }
                return Error::e_explain(
                    ErrorType::ConnectionClosed,
                    "the upstream closed the connection before the body ended",
                );
            }
        }
    }

    /// The connection, when it may carry another request: the answer kept it alive and its body
    /// ended with nothing after it.
    pub fn reuse(self) -> Option<S> {
        (self.keepalive && self.body == Body::Done && self.buf.is_empty()).then_some(self.stream)
    }

    /// `first` and the data of the chunks after it that are already in the buffer, as one piece.
    ///
    /// Why: a stream's events come a chunk each, and when the gateway gets to a connection late
    /// (1,000 streams on a shared core) several are waiting in one read. Handed over a chunk at a
    /// time they left in as many writes, each waking the client for bytes that were all here: a
    /// loopback write's wake-up of the reader was the largest part of the gateway's CPU per
    /// event (issue 19). Nothing waits for more bytes: this takes only what was read. A framing
    /// error past `first` is left for the next read, so the data before it still goes out.
    fn gather(&mut self, first: Bytes) -> Bytes {
        let Ok(Some(second)) = self.take() else {
            return first;
        };
        let mut out = BytesMut::with_capacity(first.len() + second.len() + self.buf.len());
        out.extend_from_slice(&first);
        out.extend_from_slice(&second);
        while let Ok(Some(more)) = self.take() {
            out.extend_from_slice(&more);
        }
        out.freeze()
    }

    /// Body bytes from the buffer, if any are there; moves the framing on.
    fn take(&mut self) -> Result<Option<Bytes>> {
        self.advance()?;
        let out = match self.body {
            Body::Close if !self.buf.is_empty() => self.buf.split().freeze(),
            Body::Length(left) if !self.buf.is_empty() => {
                let n = usize::try_from(left)
                    .unwrap_or(usize::MAX)
                    .min(self.buf.len());
                self.body = match left - n as u64 {
                    0 => Body::Done,
                    left => Body::Length(left),
                };
                self.buf.split_to(n).freeze()
            }
            Body::Chunked(Chunk::Data(left)) if !self.buf.is_empty() => {
                let n = usize::try_from(left)
                    .unwrap_or(usize::MAX)
                    .min(self.buf.len());
                self.body = Body::Chunked(match left - n as u64 {
                    0 => Chunk::DataEnd,
                    left => Chunk::Data(left),
                });
                self.buf.split_to(n).freeze()
            }
            _ => return Ok(None),
        };
        // Past a chunk's end: when the last chunk is already here too, the body ends with these
        // bytes (the caller settles before it sends them on). A framing error there is the next
        // read's (`advance` changes nothing when it fails), so these bytes still go out.
        let _ = self.advance();
        Ok(Some(out))
    }

    /// Moves a chunked body's framing over what the buffer holds of it (size lines, the CRLF
    /// after a chunk, the trailers), stopping at data or where more bytes are needed.
    fn advance(&mut self) -> Result<()> {
        let bad = |why: &'static str| Error::e_explain(ErrorType::InvalidHTTPHeader, why);
        while let Body::Chunked(state) = self.body {
            match state {
                Chunk::Data(_) => return Ok(()),
                Chunk::Size => match httparse::parse_chunk_size(&self.buf) {
                    Ok(httparse::Status::Complete((used, 0))) => {
                        self.buf.advance(used);
                        self.body = Body::Chunked(Chunk::Trailers);
                    }
                    Ok(httparse::Status::Complete((used, size))) => {
                        self.buf.advance(used);
                        self.body = Body::Chunked(Chunk::Data(size));
                    }
                    Ok(httparse::Status::Partial) if self.buf.len() < MAX_TRAILERS => return Ok(()),
                    _ => return bad("the upstream sent an invalid chunk size"),
                },
                Chunk::DataEnd => match self.buf.get(..2) {
                    None if self.buf.first().is_none_or(|b| *b == b'\r') => return Ok(()),
                    Some(b"\r\n") => {
                        self.buf.advance(2);
                        self.body = Body::Chunked(Chunk::Size);
                    }
                    _ => return bad("the upstream's chunk did not end with CRLF"),
                },
                Chunk::Trailers => {
                    // Empty: CRLF at once. Else header lines up to an empty line.
                    let end = if self.buf.starts_with(b"\r\n") {
                        Some(2)
                    } else {
                        memchr::memmem::find(&self.buf, b"\r\n\r\n").map(|i| i + 4)
                    };
                    match end {
                        Some(n) => {
                            self.buf.advance(n);
                            self.body = Body::Done;
                        }
                        None if self.buf.len() < MAX_TRAILERS => return Ok(()),
                        None => return bad("the upstream's trailers are too large"),
                    }
                }
            }
        }
        Ok(())
    }
}

/// Reads what is there (at least one byte, or 0 at the close).
async fn fill<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut BytesMut) -> Result<usize> {
    if buf.capacity() - buf.len() < READ / 4 {
        buf.reserve(READ);
    }
    stream
        .read_buf(buf)
        .await
        .or_err(ErrorType::ReadError, "reading from the upstream")
}

/// A complete head from the start of `buf` (taken off it), with its body's framing and whether it
/// keeps the connection alive; `None` when more bytes are needed.
fn parse_head(
    buf: &mut BytesMut,
    head_request: bool,
    dropped: &dyn Fn(&[u8]) -> bool,
) -> Result<Option<(Box<Parts>, Body, bool)>> {
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    // As lenient as Pingora's client: spaces after a name, obsolete line folding (RFC 9112 §5.2).
    let mut config = httparse::ParserConfig::default();
    config.allow_spaces_after_header_name_in_responses(true);
    config.allow_obsolete_multiline_headers_in_responses(true);
    let len = match config.parse_response_with_uninit_headers(&mut resp, &buf[..], &mut headers) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => {
            return Error::e_explain(
                ErrorType::InvalidHTTPHeader,
                format!("the upstream's response head is malformed: {e}"),
            )
        }
    };
    let code = resp.code.unwrap_or(0);
    let version = match resp.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    // Other answers keep every header: a 429's limit headers tell the resilience chain whether the
    // provider's account is exhausted.
    let success = (200..300).contains(&code);
    let skip = |name: &[u8]| success && !frames(name) && dropped(name);
    let (mut headers, framing) = read_headers(resp.headers, &buf[..len], skip)?;
    let status = StatusCode::from_u16(code)
        .or_err(ErrorType::InvalidHTTPHeader, "the upstream's status code")?;
    // The reason phrase is not kept: the client's head is the gateway's, with the status's own.
    buf.advance(len);
    if framing.coded {
        headers.remove(http::header::CONTENT_LENGTH);
    }
    // No case map: the gateway sends no upstream header on with its casing (see the module docs).
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = status;
    parts.version = version;
    parts.headers = headers;
    let head = Box::new(parts);
    let body = framing.body(status, head_request);
    let keepalive = match version {
        Version::HTTP_11 => !framing.close,
        _ => framing.keep_alive && !framing.close,
    } && body != Body::Close;
    Ok(Some((head, body, keepalive)))
}

/// Whether a header named `raw` (any case) can frame the body or the connection.
fn frames(raw: &[u8]) -> bool {
    [
        b"content-length".as_slice(),
        b"transfer-encoding",
        b"connection",
    ]
    .iter()
    .any(|n| n.eq_ignore_ascii_case(raw))
}

/// The parsed `headers` of `head` (the head's bytes) into a map, but for those `skip` names, and
/// what they say about framing.
fn read_headers(
    headers: &[httparse::Header<'_>],
    head: &[u8],
    skip: impl Fn(&[u8]) -> bool,
) -> Result<(HeaderMap, Framing)> {
    // With room for the gateway's own headers: this map becomes the client's (`relay.rs`).
    let mut map = HeaderMap::with_capacity(headers.len() + OWN_HEADERS);
    // The head's bytes, shared by the header values (one copy of the head, none of each value).
    let raw = Bytes::copy_from_slice(head);
    let base = head.as_ptr() as usize;
    let mut framing = Framing::default();
    for h in headers {
        if skip(h.name.as_bytes()) {
            continue;
        }
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .or_err(ErrorType::InvalidHTTPHeader, "an upstream header name")?;
        framing.note(&name, h.value)?;
        let at = h.value.as_ptr() as usize - base;
        let value = match HeaderValue::from_maybe_shared(raw.slice(at..at + h.value.len())) {
            Ok(v) => v,
            // A folded value: each line break becomes a space (RFC 9112 §5.2), never sent on.
            Err(_) => HeaderValue::from_bytes(&unfold(h.value))
                .or_err(ErrorType::InvalidHTTPHeader, "an upstream header value")?,
        };
        map.append(name, value);
    }
    Ok((map, framing))
}

/// What a response head's framing headers said.
#[derive(Default)]
struct Framing {
    length: Option<u64>,
    /// `Transfer-Encoding` was there; `chunked`: its last coding is `chunked`.
    coded: bool,
    chunked: bool,
    /// `Connection` tokens.
    close: bool,
    keep_alive: bool,
}

impl Framing {
    /// Takes in one header (any: those that do not frame are passed over).
    fn note(&mut self, name: &HeaderName, value: &[u8]) -> Result<()> {
        if name == http::header::CONTENT_LENGTH {
            let n = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok());
            match (n, self.length) {
                (Some(n), None) => self.length = Some(n),
                (Some(n), Some(m)) if n == m => {}
                _ => {
                    return Error::e_explain(
                        ErrorType::InvalidHTTPHeader,
                        "the upstream's Content-Length is invalid",
                    )
                }
            }
        } else if name == http::header::TRANSFER_ENCODING {
            self.coded = true;
            // The last coding decides: chunked ends the body, anything else runs to the close.
            if let Some(last) = value
                .rsplit(|b| *b == b',')
                .map(<[u8]>::trim_ascii)
                .find(|c| !c.is_empty())
            {
                self.chunked = last.eq_ignore_ascii_case(b"chunked");
            }
        } else if name == http::header::CONNECTION {
            for token in value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                self.close |= token.eq_ignore_ascii_case(b"close");
                self.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
        Ok(())
    }

    /// How the body of a `status` answer ends (RFC 9112 §6.3).
    fn body(&self, status: StatusCode, head_request: bool) -> Body {
        if head_request
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            Body::Done
        } else if self.coded {
            if self.chunked {
                Body::Chunked(Chunk::Size)
            } else {
                Body::Close
            }
        } else {
            match self.length {
                Some(0) => Body::Done,
                Some(n) => Body::Length(n),
                None => Body::Close,
            }
        }
    }
}

/// `value` with CR and LF as spaces.
fn unfold(value: &[u8]) -> Vec<u8> {
    value
        .iter()
        .map(|b| if matches!(b, b'\r' | b'\n') { b' ' } else { *b })
        .collect()
}

#[cfg(test)]
mod tests;
