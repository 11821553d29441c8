//! Non-event-stream bodies: one JSON document, or Gemini's `streamGenerateContent` without
//! `alt=sse` (a JSON array sent element by element). Buffered up to a cap, parsed at the end: first
//! for the usage alone (every other member skipped unread), and only when that finds none, whole,
//! for the text generated.

use serde::de::IgnoredAny;

use super::extract::{self, Accum, Doc, RawUsage};
use super::Surface;

/// Bodies up to this size are parsed whole.
pub(super) const MAX_BODY: usize = 4 << 20;
/// Beyond [`MAX_BODY`], only this much of the end of the body is kept: providers put usage
/// last (`usage` after `data` in an embeddings list, `usageMetadata` after `candidates`).
const TAIL: usize = 64 << 10;

/// A buffered JSON body.
#[derive(Debug, Default)]
pub(super) struct JsonBody {
    buf: Vec<u8>,
    /// The body outgrew [`MAX_BODY`]: `buf` holds only its tail.
    tail_only: bool,
}

impl JsonBody {
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
        if self.buf.len() > MAX_BODY || self.tail_only {
            self.tail_only = true;
            if self.buf.len() > 2 * TAIL {
                let cut = self.buf.len() - TAIL;
                self.buf.drain(..cut);
            }
        }
    }

    /// Reads the body. The usage is final when the provider reported it in a body that
    /// parsed completely (or, in tail mode, wherever it was found).
    pub fn read(&self, surface: Surface, incremental: bool) -> Accum {
        let mut acc = Accum::default();
        if self.tail_only {
            if let Some(u) = tail_usage(&self.buf) {
                acc.last = u.pair();
                acc.final_usage = acc.last.is_some();
            }
            return acc;
        }
        let complete = match first_byte(&self.buf) {
            Some(b'[') => read_array(&self.buf, surface, incremental, &mut acc),
            _ => {
                if let Some(p) = extract::reported(surface, &self.buf) {
                    acc.last = Some(p);
                    acc.final_usage = true;
                    return acc;
                }
                extract::read(surface, incremental, &mut acc, &self.buf) != Doc::NotJson
            }
        };
        if complete && acc.last.is_some() {
            acc.final_usage = true;
        }
        acc
    }
}

fn first_byte(b: &[u8]) -> Option<u8> {
    b.iter().copied().find(|c| !c.is_ascii_whitespace())
}

/// Reads each element of a JSON array in turn, stopping at the first incomplete one (a body
/// cut short). Returns whether the whole array was read.
fn read_array(buf: &[u8], surface: Surface, incremental: bool, acc: &mut Accum) -> bool {
    let Some(open) = buf.iter().position(|&c| c == b'[') else {
        return false;
    };
    let mut pos = open + 1;
    loop {
        while buf
            .get(pos)
            .is_some_and(|c| c.is_ascii_whitespace() || *c == b',')
        {
            pos += 1;
        }
        match buf.get(pos) {
            None => return false,
            Some(b']') => return first_byte(buf.get(pos + 1..).unwrap_or(&[])).is_none(),
            Some(_) => {}
        }
        let rest = buf.get(pos..).unwrap_or(&[]);
        let mut it = serde_json::Deserializer::from_slice(rest).into_iter::<IgnoredAny>();
        match it.next() {
            Some(Ok(_)) => {
                let end = it.byte_offset();
                extract::read(surface, incremental, acc, rest.get(..end).unwrap_or(&[]));
                pos += end;
            }
            _ => return false,
        }
    }
}

/// The usage object after the last `"usage":` or `"usageMetadata":` key in `buf`.
fn tail_usage(buf: &[u8]) -> Option<RawUsage> {
    let mut end = buf.len();
    while let Some(i) = memchr::memmem::rfind(buf.get(..end)?, b"\"usage") {
        end = i;
        let after = buf.get(i + 6..)?;
        let after = after
            .strip_prefix(b"\"")
            .or_else(|| after.strip_prefix(b"Metadata\""));
        let Some(after) = after else { continue };
        let after = after.trim_ascii_start();
        let Some(value) = after.strip_prefix(b":") else {
            continue;
        };
        let mut it = serde_json::Deserializer::from_slice(value).into_iter::<RawUsage>();
        if let Some(Ok(u)) = it.next() {
            return Some(u);
        }
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use leaky_tokenize::Vendor;

    #[test]
    fn tail_mode_finds_usage_at_the_end_of_a_huge_body() {
        let mut body = JsonBody::default();
        body.push(b"{\"object\":\"list\",\"data\":[");
        let vector = format!("{{\"embedding\":[{}0.5]}},", "0.125,".repeat(4000));
        while !body.tail_only {
            body.push(vector.as_bytes());
        }
        body.push(b"{\"embedding\":[]}],\"model\":\"m\",\"usage\":{\"prompt_tokens\":1234,\"total_tokens\":1234}}");
        assert!(body.tail_only && body.buf.len() <= 2 * TAIL);
        let acc = body.read(Surface::Embeddings(Vendor::OpenAi), false);
        assert_eq!(acc.last, Some((1234, 0)));
        assert!(acc.final_usage);
    }

    #[test]
    fn tail_usage_skips_escaped_mentions() {
        let b = br#"{"usageMetadata":{"promptTokenCount":3,"totalTokenCount":5},"x":"\"usage\" is a word"}"#;
        assert_eq!(tail_usage(b).and_then(|u| u.pair()), Some((3, 2)));
        assert!(tail_usage(b"{\"usage\": 12").is_none());
    }

    #[test]
    fn a_reported_usage_is_read_without_the_text_and_its_absence_counts_the_text() {
        let with = br#"{"choices":[{"index":0,"message":{"role":"assistant","content":"Hi there"}}],"usage":{"prompt_tokens":5,"completion_tokens":3,"total_tokens":8}}"#;
        let mut body = JsonBody::default();
        body.push(with);
        let acc = body.read(Surface::ChatCompletions(Vendor::OpenAi), false);
        assert_eq!((acc.last, acc.final_usage), (Some((5, 3)), true));
        assert_eq!(acc.gen.content(0), "", "the text is not collected");
        let without = br#"{"choices":[{"index":0,"message":{"role":"assistant","content":"Hi there"}}],"usage":null}"#;
        let mut body = JsonBody::default();
        body.push(without);
        let acc = body.read(Surface::ChatCompletions(Vendor::OpenAi), false);
        assert_eq!((acc.last, acc.final_usage), (None, false));
        assert_eq!(acc.gen.content(0), "Hi there");
        // Responses: the `response` object's usage wins, as when the document is read whole.
        let resp = br#"{"usage":{"input_tokens":1,"output_tokens":1},"response":{"usage":{"input_tokens":4,"output_tokens":6}}}"#;
        let mut body = JsonBody::default();
        body.push(resp);
        let acc = body.read(Surface::Responses(Vendor::OpenAi), false);
        assert_eq!(acc.last, Some((4, 6)));
        let mut cut = JsonBody::default();
        cut.push(&with[..with.len() - 1]);
        let acc = cut.read(Surface::ChatCompletions(Vendor::OpenAi), false);
        assert!(!acc.final_usage, "a body cut short is not a report");
    }

    #[test]
    fn a_cut_json_array_reads_its_complete_elements() {
        let e1 = r#"{"candidates":[{"content":{"parts":[{"text":"abcd"}]}}],"usageMetadata":{"promptTokenCount":7,"totalTokenCount":7}}"#;
        let e2 = r#"{"candidates":[{"content":{"parts":[{"text":"efgh"}]},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":7,"candidatesTokenCount":2,"totalTokenCount":9}}"#;
        let whole = format!("[{e1},\r\n{e2}]");
        let mut body = JsonBody::default();
        body.push(whole.as_bytes());
        let acc = body.read(Surface::GeminiStreamGenerate, false);
        assert_eq!((acc.last, acc.final_usage), (Some((7, 2)), true));
        let mut cut = JsonBody::default();
        cut.push(&whole.as_bytes()[..whole.len() - 20]);
        let acc = cut.read(Surface::GeminiStreamGenerate, false);
        assert_eq!((acc.last, acc.final_usage), (Some((7, 0)), false));
        assert_eq!(acc.gen.content(0), "abcd");
    }
}
