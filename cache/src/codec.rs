//! The binary encoding of an [`Entry`] as a Redis value: versioned, body compressed with zstd.
//!
//! Layout (integers little-endian):
//!
//! ```text
//! magic 0xC7 | version 1 | flags u8 | status u16 | stored_at_ms u64
//! | content_type (u16 len, bytes) | provider (u16 len, bytes)
//! | [served_model (u16 len, bytes)] if flags & MODEL | [prompt u64, completion u64] if flags & USAGE
//! | body_len u32 (uncompressed) | body (zstd frame if flags & ZSTD, else raw) -- to the end
//! ```
//!
//! Why zstd rather than lz4: it is already in the dependency tree (pingora-header-serde), and on
//! JSON/SSE text level 1 compresses markedly better than lz4 at comparable speed; the round trip to
//! Redis dominates either way. Small or incompressible bodies are stored raw (flag clear).
//!
//! Decoding never trusts the value: anything truncated, foreign, of another version, with invalid
//! UTF-8, a body over [`MAX_BODY`] or trailing bytes decodes to `None` (a miss, counted).

use crate::{CachedUsage, Entry};
use bytes::Bytes;
use std::cell::RefCell;

const MAGIC: u8 = 0xC7;
const VERSION: u8 = 1;
const FLAG_ZSTD: u8 = 1;
const FLAG_MODEL: u8 = 2;
const FLAG_USAGE: u8 = 4;
/// Bodies shorter than this are not worth a zstd frame (its header alone is ~10 bytes).
const COMPRESS_MIN: usize = 128;
/// zstd level 1: the fastest standard level; higher levels buy little on short JSON.
const LEVEL: i32 = 1;
/// The largest body a value may claim: bounds the allocation a corrupted length could ask for.
pub const MAX_BODY: usize = 32 << 20;

impl Entry {
    /// The value stored in Redis (see the module docs for the layout).
    pub fn encode(&self) -> Vec<u8> {
        let (flags_body, body) = compress(&self.body);
        let mut flags = flags_body;
        if self.served_model.is_some() {
            flags |= FLAG_MODEL;
        }
        if self.usage.is_some() {
            flags |= FLAG_USAGE;
        }
        // Header, strings and usage fit in `weight()`'s 64 bytes of overhead beside the raw fields.
        let mut out = Vec::with_capacity(self.weight() - self.body.len() + body.len());
        out.extend_from_slice(&[MAGIC, VERSION, flags]);
        out.extend_from_slice(&self.status.to_le_bytes());
        out.extend_from_slice(&self.stored_at_ms.to_le_bytes());
        put_str(&mut out, &self.content_type);
        put_str(&mut out, &self.provider);
        if let Some(model) = &self.served_model {
            put_str(&mut out, model);
        }
        if let Some(usage) = &self.usage {
            out.extend_from_slice(&usage.prompt.to_le_bytes());
            out.extend_from_slice(&usage.completion.to_le_bytes());
        }
        let body_len = u32::try_from(self.body.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&body_len.to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Parses a value written by [`encode`](Entry::encode); `None` for anything else.
    pub fn decode(bytes: &[u8]) -> Option<Entry> {
        let mut r = Reader(bytes);
        if r.u8()? != MAGIC || r.u8()? != VERSION {
            return None;
        }
        let flags = r.u8()?;
        if flags & !(FLAG_ZSTD | FLAG_MODEL | FLAG_USAGE) != 0 {
            return None;
        }
        let status = u16::from_le_bytes(r.array()?);
        let stored_at_ms = u64::from_le_bytes(r.array()?);
        let content_type = r.string()?;
        let provider = r.string()?;
        let served_model = if flags & FLAG_MODEL != 0 {
            Some(r.string()?)
        } else {
            None
        };
        let usage = if flags & FLAG_USAGE != 0 {
            let prompt = u64::from_le_bytes(r.array()?);
            let completion = u64::from_le_bytes(r.array()?);
            Some(CachedUsage { prompt, completion })
        } else {
            None
        };
        let body_len = usize::try_from(u32::from_le_bytes(r.array()?)).ok()?;
        let body = decompress(flags & FLAG_ZSTD != 0, r.0, body_len)?;
        Some(Entry {
            status,
            content_type,
            body,
            stored_at_ms,
            provider,
            served_model,
            usage,
        })
    }
}

thread_local! {
    // One zstd context per thread, made on first use: creating a context per call cost ~10 µs of a
    // Redis hit (a perf profile of `loadtests/cache/run` put it at 9% of the gateway's CPU on hits).
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// Runs `f` with this thread's compressor (`None` when zstd cannot make one).
fn with_compressor<T>(
    f: impl FnOnce(&mut zstd::bulk::Compressor<'static>) -> Option<T>,
) -> Option<T> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.try_borrow_mut().ok()?;
        if slot.is_none() {
            *slot = zstd::bulk::Compressor::new(LEVEL).ok();
        }
        slot.as_mut().and_then(f)
    })
}

/// Runs `f` with this thread's decompressor (`None` when zstd cannot make one).
fn with_decompressor<T>(
    f: impl FnOnce(&mut zstd::bulk::Decompressor<'static>) -> Option<T>,
) -> Option<T> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.try_borrow_mut().ok()?;
        if slot.is_none() {
            *slot = zstd::bulk::Decompressor::new().ok();
        }
        slot.as_mut().and_then(f)
    })
}

/// The body as stored and its flag: a zstd frame when that is smaller, else the raw bytes.
fn compress(body: &[u8]) -> (u8, std::borrow::Cow<'_, [u8]>) {
    if body.len() >= COMPRESS_MIN && body.len() <= MAX_BODY {
        if let Some(packed) = with_compressor(|c| c.compress(body).ok()) {
            if packed.len() < body.len() {
                return (FLAG_ZSTD, packed.into());
            }
        }
    }
    (0, body.into())
}

fn decompress(zstd: bool, stored: &[u8], body_len: usize) -> Option<Bytes> {
    if body_len > MAX_BODY {
        return None;
    }
    if !zstd {
        return (stored.len() == body_len).then(|| Bytes::copy_from_slice(stored));
    }
    let body = with_decompressor(|d| d.decompress(stored, body_len).ok())?;
    (body.len() == body_len).then(|| Bytes::from(body))
}

/// Strings are length-prefixed with a u16; longer ones (never seen in headers or model names) are
/// cut at a character boundary rather than making `encode` fallible.
fn put_str(out: &mut Vec<u8>, s: &str) {
    let mut end = s.len().min(usize::from(u16::MAX));
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let len = u16::try_from(end).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&s.as_bytes()[..end]);
}

/// A cursor over an untrusted value: every read is bounds-checked and returns `None` past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    fn string(&mut self) -> Option<String> {
        let len = usize::from(u16::from_le_bytes(self.array()?));
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes).ok().map(str::to_owned)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use proptest::prelude::*;

    fn entry(body: &[u8]) -> Entry {
        Entry {
            status: 200,
            content_type: "application/json".into(),
            body: Bytes::copy_from_slice(body),
            stored_at_ms: 1_715_943_598_123,
            provider: "openai".into(),
            served_model: Some("gpt-4o-mini".into()),
            usage: Some(CachedUsage {
                prompt: 12,
                completion: 34,
            }),
        }
    }

    fn json_body(n: usize) -> Vec<u8> {
        let mut s = String::from(r#"{"id":"chatcmpl-1","choices":["#);
        while s.len() < n {
            s.push_str(
                r#"{"index":0,"message":{"role":"assistant","content":"The answer is 42."}},"#,
            );
        }
        s.push_str("]}");
        s.into_bytes()
    }

    #[test]
    fn round_trips_with_and_without_optional_fields() {
        let full = entry(&json_body(4096));
        assert_eq!(Entry::decode(&full.encode()).as_ref(), Some(&full));
        let bare = Entry {
            served_model: None,
            usage: None,
            ..entry(b"{}")
        };
        assert_eq!(Entry::decode(&bare.encode()).as_ref(), Some(&bare));
        let empty = Entry {
            body: Bytes::new(),
            ..entry(b"")
        };
        assert_eq!(Entry::decode(&empty.encode()).as_ref(), Some(&empty));
    }

    #[test]
    fn a_repetitive_body_is_compressed_and_a_short_one_is_not() {
        let big = entry(&json_body(4096));
        let encoded = big.encode();
        assert!(encoded.len() < big.body.len() / 4, "{}", encoded.len());
        assert_eq!(encoded[2] & FLAG_ZSTD, FLAG_ZSTD);
        assert_eq!(entry(b"{\"a\":1}").encode()[2] & FLAG_ZSTD, 0);
    }

    #[test]
    fn every_truncation_of_a_valid_value_is_refused() {
        for body in [json_body(600), b"{\"short\":true}".to_vec()] {
            let encoded = entry(&body).encode();
            for cut in 0..encoded.len() {
                assert_eq!(Entry::decode(&encoded[..cut]), None, "cut at {cut}");
            }
            let mut longer = encoded.clone();
            longer.push(0);
            assert_eq!(Entry::decode(&longer), None, "trailing byte");
        }
    }

    #[test]
    fn foreign_values_and_other_versions_are_refused() {
        assert_eq!(Entry::decode(b""), None);
        assert_eq!(Entry::decode(b"{\"status\":200}"), None);
        let mut encoded = entry(b"{}").encode();
        encoded[1] = VERSION + 1;
        assert_eq!(Entry::decode(&encoded), None);
    }

    #[test]
    fn a_claimed_body_over_the_cap_is_refused_without_allocating_it() {
        let mut encoded = entry(b"").encode();
        let len_at = encoded.len() - 4;
        encoded[len_at..].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Entry::decode(&encoded), None);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Entry::decode(&bytes);
        }

        #[test]
        fn a_flipped_byte_never_panics_and_never_yields_a_different_body_length(
            at in 0usize..2048, bit in 0u8..8,
        ) {
            let original = entry(&json_body(700));
            let mut encoded = original.encode();
            let at = at % encoded.len();
            encoded[at] ^= 1 << bit;
            if let Some(decoded) = Entry::decode(&encoded) {
                prop_assert_eq!(decoded.body.len(), original.body.len());
            }
        }

        #[test]
        fn any_entry_round_trips(
            body in proptest::collection::vec(any::<u8>(), 0..2048),
            status in any::<u16>(),
            model in proptest::option::of("[a-z0-9.-]{0,40}"),
            usage in proptest::option::of((any::<u64>(), any::<u64>())),
        ) {
            let e = Entry {
                status,
                served_model: model,
                usage: usage.map(|(prompt, completion)| CachedUsage { prompt, completion }),
                ..entry(&body)
            };
            prop_assert_eq!(Entry::decode(&e.encode()), Some(e));
        }
    }
}
