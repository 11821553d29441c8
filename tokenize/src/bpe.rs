//! OpenAI BPE encodings (`o200k_base`, `cl100k_base`) and the [`Tokenizer`] choice.

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

    /// Tokens of a piece of text (special tokens are treated as plain text).
    pub fn text(self, s: &str) -> u64 {
        if s.is_empty() {
            return 0;
        }
        match self.bpe() {
            Some(bpe) => cached_count(self, s, bpe),
            None => text(s),
        }
    }

    /// Tokens of an OpenAI-style message `content`.
    pub fn content(self, v: &Value) -> u64 {
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

    /// Tokens of one chat message. BPE encodings follow OpenAI's published
    /// recipe (3 per message, plus the encoded `role`, `content` and
    /// `name`, plus 1 for a name); the approximation does not count the role.
    pub fn chat_message(self, m: &Value) -> u64 {
        if !self.is_bpe() {
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

    /// Prompt tokens of a chat request: messages, reply priming and tools.
    pub fn chat(self, messages: &[Value], tools: Option<&Value>) -> u64 {
        let mut n: u64 = messages.iter().map(|m| self.chat_message(m)).sum::<u64>() + REPLY_PRIMING;
        if let Some(t @ Value::Array(a)) = tools {
            if !a.is_empty() {
                n += self.text(&t.to_string());
            }
        }
        n
    }
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
        return bpe.encode_ordinary(s).len() as u64;
    }
    let h = fnv1a(s.as_bytes(), tk as u64);
    let slot = &cache()[(h as usize) % CACHE_SLOTS];
    // Tag 0 marks an empty slot, so force the tag's low bit on.
    let tag = (h >> COUNT_BITS) | 1;
    let v = slot.load(Ordering::Relaxed);
    if v >> COUNT_BITS == tag {
        return v & COUNT_MASK;
    }
    let n = bpe.encode_ordinary(s).len() as u64;
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
}
