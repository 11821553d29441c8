//! OpenAI BPE encodings (`o200k_base`, `cl100k_base`) and the [`Tokenizer`] choice; the chat
//! rules over them; long texts counted segment by segment ([`SEGMENT_BYTES`]) so a count is linear
//! in the text with bounded memory.

use std::sync::OnceLock;

use serde_json::Value;
use tiktoken_rs::CoreBPE;

use crate::approx::{chat_message, text, NON_TEXT_PART, PER_MESSAGE, PER_NAME, REPLY_PRIMING};

/// How a stub counts tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tokenizer {
    /// The documented `ceil(chars / 4)` approximation (Gemini, Qwen and the
    /// OpenAI-compatible layers of both).
    Approx,
    /// OpenAI `o200k_base` (gpt-4o, gpt-4.1, gpt-4.5, gpt-5, o-series).
    O200k,
    /// OpenAI `cl100k_base` (gpt-4, gpt-3.5, embeddings).
    Cl100k,
}

fn o200k() -> Option<&'static CoreBPE> {
    static BPE: OnceLock<Option<CoreBPE>> = OnceLock::new();
    BPE.get_or_init(|| tiktoken_rs::o200k_base().ok()).as_ref()
}

fn cl100k() -> Option<&'static CoreBPE> {
    static BPE: OnceLock<Option<CoreBPE>> = OnceLock::new();
    BPE.get_or_init(|| tiktoken_rs::cl100k_base().ok()).as_ref()
}

/// Builds both BPE tables now (they are otherwise built on first use, which
/// takes a few hundred milliseconds).
pub fn warm_up() {
    let _ = o200k();
    let _ = cl100k();
}

impl Tokenizer {
    /// The encoding OpenAI uses for `model`: `cl100k_base` for `gpt-4`
    /// (except 4o/4.1/4.5), `gpt-3.5*` and `text-embedding-*`; otherwise
    /// `o200k_base`.
    pub fn for_openai_model(model: &str) -> Tokenizer {
        let newer_gpt4 = ["gpt-4o", "gpt-4.1", "gpt-4.5"]
            .iter()
            .any(|p| model.starts_with(p));
        if model.starts_with("gpt-3.5")
            || model.starts_with("text-embedding")
            || (model.starts_with("gpt-4") && !newer_gpt4)
        {
            Tokenizer::Cl100k
        } else {
            Tokenizer::O200k
        }
    }

    fn bpe(self) -> Option<&'static CoreBPE> {
        match self {
            Tokenizer::Approx => None,
            Tokenizer::O200k => o200k(),
            Tokenizer::Cl100k => cl100k(),
        }
    }

    /// Whether this is a real BPE encoding.
    pub fn is_bpe(self) -> bool {
        self != Tokenizer::Approx
    }

    /// Tokens of a piece of text (special tokens are treated as plain text). Linear in the text's
    /// length, with bounded memory: see [`SEGMENT_BYTES`].
    pub fn text(self, s: &str) -> u64 {
        if s.is_empty() {
            return 0;
        }
        match self.bpe() {
            Some(bpe) => cached_count(self, s, bpe),
            None => text(s),
        }
    }

    /// The byte length of the encoding's longest token (`None` for the approximation): a text of
    /// `n` bytes is at least `ceil(n / longest)` tokens, and at most `n`.
    pub fn longest_token_bytes(self) -> Option<u64> {
        match self {
            Tokenizer::Approx => None,
            Tokenizer::O200k => Some(O200K_LONGEST_TOKEN),
            Tokenizer::Cl100k => Some(CL100K_LONGEST_TOKEN),
        }
    }

    /// Tokens of an OpenAI-style message `content`.
    pub fn content(self, v: &Value) -> u64 {
        Counter::exact(self).content(v)
    }

    /// Tokens of one chat message. BPE encodings follow OpenAI's published
    /// recipe (3 per message, plus the encoded `role`, `content` and
    /// `name`, plus 1 for a name); the approximation does not count the role.
    pub fn chat_message(self, m: &Value) -> u64 {
        Counter::exact(self).chat_message(m)
    }

    /// Prompt tokens of a chat request: messages, reply priming and tools.
    pub fn chat(self, messages: &[Value], tools: Option<&Value>) -> u64 {
        Counter::exact(self).chat(messages, tools)
    }
}

/// Byte length of the longest token of `o200k_base` and `cl100k_base` (checked against the
/// vocabularies by a test).
const O200K_LONGEST_TOKEN: u64 = 128;
const CL100K_LONGEST_TOKEN: u64 = 128;

/// How the prompt rules measure text: in tokens, or (`bytes`) by the byte length of every text a
/// BPE would encode, which bounds the tokens cheaply (no BPE runs; see
/// [`Tokenizer::longest_token_bytes`]). The approximation is cheap, so it always counts exactly.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Counter {
    pub(crate) tk: Tokenizer,
    bytes: bool,
}

impl Counter {
    pub(crate) fn exact(tk: Tokenizer) -> Self {
        Counter { tk, bytes: false }
    }

    pub(crate) fn bytes(tk: Tokenizer) -> Self {
        Counter { tk, bytes: true }
    }

    pub(crate) fn text(self, s: &str) -> u64 {
        if self.bytes && self.tk.is_bpe() {
            s.len() as u64
        } else {
            self.tk.text(s)
        }
    }

    pub(crate) fn content(self, v: &Value) -> u64 {
        match v {
            Value::String(s) => self.text(s),
            Value::Array(parts) => parts
                .iter()
                .map(|p| match p {
                    Value::String(s) => self.text(s),
                    Value::Object(o) => match o.get("text") {
                        Some(Value::String(s)) => self.text(s),
                        _ => NON_TEXT_PART,
                    },
                    _ => 0,
                })
                .sum(),
            _ => 0,
        }
    }

    pub(crate) fn chat_message(self, m: &Value) -> u64 {
        if !self.tk.is_bpe() {
            return chat_message(m);
        }
        let mut n = PER_MESSAGE;
        if let Some(Value::String(r)) = m.get("role") {
            n += self.text(r);
        }
        if let Some(c) = m.get("content") {
            n += self.content(c);
        }
        if let Some(Value::String(name)) = m.get("name") {
            n += PER_NAME + self.text(name);
        }
        if let Some(Value::Array(calls)) = m.get("tool_calls") {
            for call in calls {
                if let Some(f) = call.get("function") {
                    if let Some(Value::String(s)) = f.get("name") {
                        n += self.text(s);
                    }
                    if let Some(Value::String(s)) = f.get("arguments") {
                        n += self.text(s);
                    }
                }
            }
        }
        n
    }

    pub(crate) fn chat(self, messages: &[Value], tools: Option<&Value>) -> u64 {
        let mut n: u64 = messages.iter().map(|m| self.chat_message(m)).sum::<u64>() + REPLY_PRIMING;
        if let Some(t @ Value::Array(a)) = tools {
            if !a.is_empty() {
                n += self.text(&t.to_string());
            }
        }
        n
    }
}

/// The most bytes handed to tiktoken at once. tiktoken merges one pre-tokenizer piece in
/// O(n log n) time with about 56 bytes of state per byte of the piece, so a long text without
/// spaces (a 10 MiB prompt of one "word") took seconds and hundreds of MiB. Longer texts are
/// counted segment by segment ([`segments`]): the count is linear in the text and its memory
/// bounded by the segment's. Segments end where a space or tab follows a non-whitespace
/// character, which is always a boundary of the pre-tokenizer (o200k and cl100k alike), so ordinary
/// text counts exactly; only a run of this many bytes with no such place is cut inside a piece,
/// which can change the estimate by a token or two per cut (settlement uses the provider's usage).
pub const SEGMENT_BYTES: usize = 4096;

/// `s` cut into consecutive segments of at most [`SEGMENT_BYTES`] (or one char, if longer), each
/// ending at a pre-tokenizer boundary when the second half of the window has one.
pub fn segments(s: &str) -> impl Iterator<Item = &str> {
    let mut rest = s;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let cut = segment_end(rest);
        let (seg, tail) = rest.split_at(cut);
        rest = tail;
        Some(seg)
    })
}

/// Where the first segment of `s` ends (a char boundary, > 0).
fn segment_end(s: &str) -> usize {
    if s.len() <= SEGMENT_BYTES {
        return s.len();
    }
    let b = s.as_bytes();
    // A space or tab at `p` after a non-whitespace char: the pre-tokenizer starts a piece at `p`.
    let boundary = (SEGMENT_BYTES / 2..=SEGMENT_BYTES).rev().find(|&p| {
        matches!(b.get(p), Some(b' ' | b'\t'))
            && s[..p]
                .chars()
                .next_back()
                .is_some_and(|c| !c.is_whitespace())
    });
    if let Some(p) = boundary {
        return p;
    }
    let mut p = SEGMENT_BYTES;
    while p > 0 && !s.is_char_boundary(p) {
        p -= 1;
    }
    if p == 0 {
        // Unreachable for UTF-8 (a char is at most 4 bytes); take the first char whole.
        return s.chars().next().map_or(s.len(), char::len_utf8);
    }
    p
}

fn bpe_count(s: &str, bpe: &CoreBPE) -> u64 {
    if s.len() <= SEGMENT_BYTES {
        return bpe.encode_ordinary(s).len() as u64;
    }
    segments(s)
        .map(|seg| bpe.encode_ordinary(seg).len() as u64)
        .sum()
}

// A small direct-mapped cache of BPE counts keyed by a hash of the text, so
// that a benchmark (or an SDK retrying the same prompt) does not re-encode the
// same strings. Each slot packs `tag (40 bits) | count (24 bits)` in one
// atomic, so a reader never sees a torn entry.
const CACHE_SLOTS: usize = 4096;
const COUNT_BITS: u32 = 24;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

fn cache() -> &'static [std::sync::atomic::AtomicU64] {
    static CACHE: OnceLock<Vec<std::sync::atomic::AtomicU64>> = OnceLock::new();
    CACHE.get_or_init(|| {
        (0..CACHE_SLOTS)
            .map(|_| std::sync::atomic::AtomicU64::new(0))
            .collect()
    })
}

fn cached_count(tk: Tokenizer, s: &str, bpe: &CoreBPE) -> u64 {
    use std::sync::atomic::Ordering;
    if s.len() > 64 * 1024 {
        return bpe_count(s, bpe);
    }
    let h = fnv1a(s.as_bytes(), tk as u64);
    let slot = &cache()[(h as usize) % CACHE_SLOTS];
    // Tag 0 marks an empty slot, so force the tag's low bit on.
    let tag = (h >> COUNT_BITS) | 1;
    let v = slot.load(Ordering::Relaxed);
    if v >> COUNT_BITS == tag {
        return v & COUNT_MASK;
    }
    let n = bpe_count(s, bpe);
    if n <= COUNT_MASK {
        slot.store((tag << COUNT_BITS) | n, Ordering::Relaxed);
    }
    n
}

/// FNV-1a over a seed and the bytes (the cache key; not a stable format).
fn fnv1a(bytes: &[u8], seed: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &x in seed.to_le_bytes().iter().chain(bytes) {
        h ^= u64::from(x);
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::approx::chat;
    use serde_json::json;
    #[test]
    fn contract_test_message_costs_fourteen_prompt_tokens() {
        // The message of stubs/contract/test_openai_sdk.py (MSGS): the SDK test asserts that the usage
        // it parses equals this count. OpenAI's own formula gives the same: 3 per message + 1 for the
        // role + 7 content tokens (o200k) + 3 priming the reply.
        let msgs =
            [serde_json::json!({"role": "user", "content": "Tell me something about foxes."})];
        assert_eq!(Tokenizer::O200k.text("Tell me something about foxes."), 7);
        assert_eq!(
            Tokenizer::for_openai_model("gpt-4o-mini").chat(&msgs, None),
            14
        );
    }

    #[test]
    fn bpe_counts_match_known_values() {
        // Reference counts from OpenAI's tiktoken.
        assert_eq!(Tokenizer::O200k.text("hello world"), 2);
        assert_eq!(Tokenizer::Cl100k.text("hello world"), 2);
        assert_eq!(Tokenizer::Cl100k.text("tiktoken is great!"), 6);
        assert_eq!(Tokenizer::O200k.text(""), 0);
        // Cached and uncached answers agree.
        let s = "Say hello in one short sentence.";
        let a = Tokenizer::O200k.text(s);
        assert_eq!(Tokenizer::O200k.text(s), a);
        assert_eq!(Tokenizer::Approx.text(s), text(s));
    }

    #[test]
    fn model_to_encoding() {
        for m in [
            "gpt-4o",
            "gpt-4o-mini",
            "gpt-4.1",
            "o3-mini",
            "o4-mini",
            "o1",
            "gpt-5",
        ] {
            assert_eq!(Tokenizer::for_openai_model(m), Tokenizer::O200k, "{m}");
        }
        for m in [
            "gpt-4",
            "gpt-4-turbo",
            "gpt-3.5-turbo-instruct",
            "text-embedding-3-small",
        ] {
            assert_eq!(Tokenizer::for_openai_model(m), Tokenizer::Cl100k, "{m}");
        }
    }

    #[test]
    fn bpe_chat_follows_the_openai_recipe() {
        let msgs = vec![
            json!({"role":"system","content":"You are terse."}),
            json!({"role":"user","name":"bob","content":"hello world"}),
        ];
        let t = Tokenizer::O200k;
        let expected = (3 + t.text("system") + t.text("You are terse."))
            + (3 + t.text("user") + t.text("hello world") + 1 + t.text("bob"))
            + 3;
        assert_eq!(t.chat(&msgs, None), expected);
        assert_eq!(Tokenizer::Approx.chat(&msgs, None), chat(&msgs, None));
    }

    #[test]
    fn longest_token_constants_match_the_vocabularies() {
        for (tk, bpe) in [
            (Tokenizer::O200k, o200k().unwrap()),
            (Tokenizer::Cl100k, cl100k().unwrap()),
        ] {
            let longest = (0..300_000u32)
                .filter_map(|r| bpe.decode_bytes(&[r]).ok())
                .map(|b| b.len() as u64)
                .max()
                .unwrap();
            assert_eq!(tk.longest_token_bytes(), Some(longest), "{tk:?}");
        }
        assert_eq!(Tokenizer::Approx.longest_token_bytes(), None);
    }

    #[test]
    fn segments_cover_the_text_within_the_bound() {
        let words = "lorem ipsum, dolor sit amet.\nconsectetur  adipiscing\telit ".repeat(500);
        let piece = "x".repeat(3 * SEGMENT_BYTES + 17);
        let wide = "é日本".repeat(SEGMENT_BYTES);
        for s in [words.as_str(), piece.as_str(), wide.as_str(), "short"] {
            let segs: Vec<&str> = segments(s).collect();
            assert_eq!(segs.concat(), s);
            assert!(segs
                .iter()
                .all(|g| !g.is_empty() && g.len() <= SEGMENT_BYTES));
        }
        // Ordinary text is cut before a space that follows a word.
        for g in segments(&words).skip(1) {
            assert!(g.starts_with([' ', '\t']), "{:?}", &g[..10]);
        }
    }

    #[test]
    fn a_long_piece_counts_as_the_sum_of_its_segments() {
        // One pre-tokenizer piece of 1 MiB: before segmenting, tiktoken merged it whole.
        let piece = "ab".repeat(512 * 1024);
        for tk in [Tokenizer::O200k, Tokenizer::Cl100k] {
            let sum: u64 = segments(&piece).map(|g| tk.text(g)).sum();
            assert_eq!(tk.text(&piece), sum);
            let bytes = piece.len() as u64;
            let longest = tk.longest_token_bytes().unwrap();
            assert!(
                sum <= bytes && sum >= bytes.div_ceil(longest),
                "{tk:?} {sum}"
            );
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
        /// Segment cuts fall on pre-tokenizer boundaries: text with words, punctuation,
        /// numbers, newlines and runs of spaces counts exactly as the unsegmented BPE does.
        #[test]
        fn segmenting_ordinary_text_is_exact(
            words in proptest::collection::vec(
                "[a-zA-Z]{1,12}|[0-9]{1,6}|[.,;:!?'\"()-]{1,3}|\n{1,2}| {1,3}|\t|[éü日本]{1,3}",
                2000..4000,
            ),
        ) {
            let mut s = String::new();
            for w in &words {
                s.push_str(w);
                s.push(' ');
            }
            proptest::prop_assume!(s.len() > SEGMENT_BYTES);
            for tk in [Tokenizer::O200k, Tokenizer::Cl100k] {
                let whole = tk.bpe().unwrap().encode_ordinary(&s).len() as u64;
                proptest::prop_assert_eq!(bpe_count(&s, tk.bpe().unwrap()), whole);
            }
        }
    }
}
