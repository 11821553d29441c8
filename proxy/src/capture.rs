//! The tee of a live answer into a response-cache [`Entry`] (issue 18, `docs/cache.md`).
//!
//! `relay.rs` hands every upstream chunk to the request's [`Capture`] as received, before the
//! meter's rewrites (a stripped usage chunk is still in the entry: a hit that asked for usage gets
//! it, one that did not has it stripped by its own meter). The capture holds the chunks themselves
//! (reference-counted, no copy while relaying) and gives up, freeing them, once they pass the
//! route's `max_entry_bytes`. The entry is built as one fresh copy of exactly the body, so it never
//! pins a larger read buffer the store's byte budget does not count. The relay marks it complete only when the upstream body ended normally
//! and every byte reached the client; an entry is built only from a complete 200.

use bytes::{Bytes, BytesMut};
use leaky_cache::{CachedUsage, Entry};
use leaky_limit::TokenUsage;

/// The upstream bytes of one live answer that may be stored.
#[derive(Debug)]
pub(crate) struct Capture {
    chunks: Vec<Bytes>,
    len: usize,
    max: usize,
    /// Went over `max`: nothing more is kept and nothing is stored.
    over: bool,
    /// The upstream body ended normally and the client received all of it.
    complete: bool,
    status: u16,
    content_type: String,
}

/// Facts of the answer the capture cannot see in its bytes.
pub(crate) struct Answered<'a> {
    pub provider: &'a str,
    pub served_model: Option<&'a str>,
    pub usage: Option<TokenUsage>,
    pub now_ms: u64,
}

impl Capture {
    /// A capture bounded by `max` body bytes.
    pub fn new(max: usize) -> Self {
        Capture {
            chunks: Vec::new(),
            len: 0,
            max,
            over: false,
            complete: false,
            status: 0,
            content_type: String::new(),
        }
    }

    /// The upstream's response head: only a 200 can be stored, and only an unencoded body (the
    /// replay sends no `content-encoding`; the gateway never asks for one, a provider may still).
    pub fn on_head(&mut self, status: u16, headers: &http::HeaderMap) {
        self.status = status;
        let encoded = headers
            .get(http::header::CONTENT_ENCODING)
            .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
        if encoded {
            self.status = 0;
        }
        let content_type = headers
            .get(http::header::CONTENT_TYPE)
            .map(|v| v.as_bytes());
        if let Some(ct) = content_type.and_then(|v| std::str::from_utf8(v).ok()) {
            self.content_type = ct.to_owned();
        }
    }

    /// One upstream chunk as received (a reference, not a copy).
    pub fn push(&mut self, chunk: &Bytes) {
        if self.over || chunk.is_empty() {
            return;
        }
        self.len += chunk.len();
        if self.len > self.max {
            self.over = true;
            self.chunks = Vec::new();
            return;
        }
        self.chunks.push(chunk.clone());
    }

    /// The answer outgrew `max_entry_bytes` (it is not stored).
    pub fn is_over(&self) -> bool {
        self.over
    }

    /// The body ended normally and all of it was written to the client.
    pub fn complete(&mut self) {
        self.complete = true;
    }

    /// The entry to store, if the answer may be stored: a complete 200 within the byte bound.
    pub fn into_entry(self, a: Answered<'_>) -> Option<Entry> {
        if !self.complete || self.over || self.status != 200 {
            return None;
        }
        // Always a fresh buffer of exactly the body's length, even for one chunk: a chunk may share
        // the allocation of a larger read buffer, which a stored entry would pin for its whole TTL
        // while the store's byte budget counted only the chunk's length.
        let mut b = BytesMut::with_capacity(self.len);
        for c in &self.chunks {
            b.extend_from_slice(c);
        }
        let body = b.freeze();
        Some(Entry {
            status: self.status,
            content_type: self.content_type,
            body,
            stored_at_ms: a.now_ms,
            provider: a.provider.to_owned(),
            served_model: a.served_model.map(str::to_owned),
            usage: a.usage.map(|u| CachedUsage {
                prompt: u.prompt,
                completion: u.completion,
            }),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn answered() -> Answered<'static> {
        Answered {
            provider: "openai",
            served_model: None,
            usage: Some(TokenUsage {
                prompt: 3,
                completion: 4,
                source: leaky_limit::UsageSource::Reported,
            }),
            now_ms: 1_000,
        }
    }

    fn sse() -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::CONTENT_TYPE,
            "text/event-stream".parse().unwrap(),
        );
        h
    }

    fn captured(status: u16, chunks: &[&'static str], max: usize) -> Capture {
        let mut c = Capture::new(max);
        c.on_head(status, &sse());
        for ch in chunks {
            c.push(&Bytes::from_static(ch.as_bytes()));
        }
        c
    }

    #[test]
    fn a_complete_200_becomes_an_entry_of_the_bytes_as_received() {
        let mut c = captured(200, &["data: a\n\n", "", "data: [DONE]\n\n"], 64);
        c.complete();
        let e = c.into_entry(answered()).unwrap();
        assert_eq!(&e.body[..], b"data: a\n\ndata: [DONE]\n\n");
        assert_eq!(e.content_type, "text/event-stream");
        assert_eq!(
            (e.status, e.stored_at_ms, e.provider.as_str()),
            (200, 1_000, "openai")
        );
        assert_eq!(
            e.usage,
            Some(CachedUsage {
                prompt: 3,
                completion: 4
            })
        );
    }

    #[test]
    fn a_chunk_of_a_larger_buffer_is_not_pinned_by_the_entry() {
        // A 10-byte chunk sliced out of a 64 KiB read buffer: the entry owns its own 10 bytes.
        let buffer = Bytes::from(vec![b'x'; 64 * 1024]);
        let chunk = buffer.slice(0..10);
        let mut c = Capture::new(10);
        c.on_head(200, &http::HeaderMap::new());
        c.push(&chunk);
        c.complete();
        let e = c.into_entry(answered()).unwrap();
        assert_eq!(e.body, chunk);
        assert_ne!(e.body.as_ptr(), chunk.as_ptr());
        drop((buffer, chunk));
        assert!(e.body.is_unique(), "the body shares no allocation");
    }

    #[test]
    fn an_encoded_body_is_never_stored() {
        let mut h = sse();
        h.insert(http::header::CONTENT_ENCODING, "gzip".parse().unwrap());
        let mut c = Capture::new(64);
        c.on_head(200, &h);
        c.push(&Bytes::from_static(b"\x1f\x8b"));
        c.complete();
        assert!(c.into_entry(answered()).is_none());
    }

    #[test]
    fn an_incomplete_answer_is_never_stored() {
        let c = captured(200, &["data: a\n\n"], 64);
        assert!(
            c.into_entry(answered()).is_none(),
            "cut, errored or client gone"
        );
    }

    #[test]
    fn only_a_200_is_stored() {
        for status in [201, 206, 429, 500] {
            let mut c = captured(status, &["{}"], 64);
            c.complete();
            assert!(c.into_entry(answered()).is_none(), "{status}");
        }
    }

    #[test]
    fn an_answer_over_the_bound_is_dropped_and_its_chunks_freed() {
        let mut c = captured(200, &["12345", "67890"], 10);
        assert!(!c.over && c.chunks.len() == 2, "exactly the bound is kept");
        c.push(&Bytes::from_static(b"x"));
        assert!(c.over && c.chunks.is_empty());
        c.complete();
        assert!(c.into_entry(answered()).is_none());
    }
}
