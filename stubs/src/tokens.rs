//! Deterministic token-count approximation shared by every stub.
//!
//! The stubs never run a real tokenizer. Instead every piece of text costs
//! `ceil(chars / 4)` tokens (Unicode scalar values, not bytes), which is the
//! usual rule of thumb for English BPE vocabularies. Structured prompts add
//! fixed overheads the way OpenAI documents them for its chat models:
//!
//! * chat (OpenAI and DashScope messages): `3` per message, plus the tokens of
//!   the message's text (string content, or every `text` part of an array
//!   content), plus `1 + text(name)` when the message has a `name`, plus the
//!   tokens of any assistant `tool_calls` (`text(function.name) +
//!   text(function.arguments)`), plus `3` for priming the reply. Tool
//!   definitions cost `text(<compact JSON of the tools array>)`. Non-text parts
//!   (images, audio) cost a flat [`NON_TEXT_PART`] tokens.
//! * Gemini `contents`: the sum of `text(part.text)` over all parts of all
//!   contents and of `systemInstruction`; no per-message overhead. Non-text
//!   parts cost [`NON_TEXT_PART`].
//! * completions (legacy) and embeddings: `text(input)` per input string; a
//!   pre-tokenized input (array of integers) costs its length.
//!
//! Generated completion text is built from 4-character pieces (see
//! `gen.rs`), so `text(content)` equals the reported completion tokens.
//!
//! The OpenAI stub itself (not the compatibility layers of Gemini and Qwen)
//! counts with real BPE encodings instead: see [`Tokenizer`].

use std::sync::OnceLock;

use serde_json::Value;
use tiktoken_rs::CoreBPE;

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
    let h = crate::gen::Hasher::default().u64(tk as u64).str(s).finish();
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

/// Tokens charged for a non-text content part (image, audio, file...).
pub const NON_TEXT_PART: u64 = 85;
/// Per-message overhead for chat formats.
pub const PER_MESSAGE: u64 = 3;
/// Overhead for priming the assistant reply in chat formats.
pub const REPLY_PRIMING: u64 = 3;
/// Extra overhead for a message carrying a `name`.
pub const PER_NAME: u64 = 1;

/// `ceil(chars / 4)`; the empty string costs 0.
pub fn text(s: &str) -> u64 {
    let chars = s.chars().count() as u64;
    chars.div_ceil(4)
}

/// Tokens of an OpenAI-style message `content` (string, array of parts, or null).
pub fn content(v: &Value) -> u64 {
    match v {
        Value::String(s) => text(s),
        Value::Array(parts) => parts
            .iter()
            .map(|p| match p {
                Value::String(s) => text(s),
                Value::Object(o) => match o.get("text") {
                    Some(Value::String(s)) => text(s),
                    _ => NON_TEXT_PART,
                },
                _ => 0,
            })
            .sum(),
        _ => 0,
    }
}

/// Tokens of one chat message (including the per-message overhead).
pub fn chat_message(m: &Value) -> u64 {
    let mut n = PER_MESSAGE;
    if let Some(c) = m.get("content") {
        n += content(c);
    }
    if let Some(Value::String(name)) = m.get("name") {
        n += PER_NAME + text(name);
    }
    if let Some(Value::Array(calls)) = m.get("tool_calls") {
        for call in calls {
            if let Some(f) = call.get("function") {
                if let Some(Value::String(s)) = f.get("name") {
                    n += text(s);
                }
                if let Some(Value::String(s)) = f.get("arguments") {
                    n += text(s);
                }
            }
        }
    }
    n
}

/// Prompt tokens of a chat request: messages, reply priming and tool definitions.
pub fn chat(messages: &[Value], tools: Option<&Value>) -> u64 {
    let mut n: u64 = messages.iter().map(chat_message).sum::<u64>() + REPLY_PRIMING;
    if let Some(t @ Value::Array(a)) = tools {
        if !a.is_empty() {
            n += text(&t.to_string());
        }
    }
    n
}

/// Tokens of a Gemini `Content` object (`{"role":..,"parts":[..]}`).
pub fn gemini_content(c: &Value) -> u64 {
    match c.get("parts") {
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|p| match p.get("text") {
                Some(Value::String(s)) => text(s),
                _ => {
                    if let Some(fc) = p.get("functionCall").or_else(|| p.get("functionResponse")) {
                        text(&fc.to_string())
                    } else {
                        NON_TEXT_PART
                    }
                }
            })
            .sum(),
        _ => 0,
    }
}

/// Prompt tokens of a Gemini request: all contents plus the system instruction.
pub fn gemini(contents: &[Value], system_instruction: Option<&Value>) -> u64 {
    contents.iter().map(gemini_content).sum::<u64>()
        + system_instruction.map(gemini_content).unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
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
    fn text_is_ceil_chars_over_four() {
        assert_eq!(text(""), 0);
        assert_eq!(text("a"), 1);
        assert_eq!(text("abcd"), 1);
        assert_eq!(text("abcde"), 2);
        assert_eq!(text("Hello, world!"), 4);
        // counts chars, not bytes
        assert_eq!(text("éééé"), 1);
        assert_eq!(text("日本語です"), 2);
    }

    #[test]
    fn chat_counts_overheads() {
        let msgs = vec![
            json!({"role":"system","content":"You are terse."}), // 14 chars -> 4
            json!({"role":"user","content":"Hi"}),               // 1
        ];
        assert_eq!(chat(&msgs, None), (3 + 4) + (3 + 1) + 3);
    }

    #[test]
    fn chat_counts_names_parts_and_tool_calls() {
        let msgs = vec![
            json!({"role":"user","name":"bob","content":[{"type":"text","text":"abcdefgh"},{"type":"image_url","image_url":{"url":"x"}}]}),
            json!({"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function","function":{"name":"get","arguments":"{\"a\":1}"}}]}),
        ];
        let expected = (3 + 1 + 1 + 2 + NON_TEXT_PART) + (3 + 1 + 2) + 3;
        assert_eq!(chat(&msgs, None), expected);
    }

    #[test]
    fn tools_add_their_json_length() {
        let msgs = vec![json!({"role":"user","content":"x"})];
        let tools = json!([{"type":"function","function":{"name":"f"}}]);
        let base = chat(&msgs, None);
        assert_eq!(chat(&msgs, Some(&tools)), base + text(&tools.to_string()));
        assert_eq!(chat(&msgs, Some(&json!([]))), base);
    }

    #[test]
    fn gemini_has_no_overhead() {
        let contents = vec![
            json!({"role":"user","parts":[{"text":"abcd"},{"text":"abcde"}]}),
            json!({"role":"model","parts":[{"text":"ok"}]}),
        ];
        let sys = json!({"parts":[{"text":"be nice"}]});
        assert_eq!(gemini(&contents, None), 1 + 2 + 1);
        assert_eq!(gemini(&contents, Some(&sys)), 1 + 2 + 1 + 2);
        let img = vec![json!({"parts":[{"inlineData":{"mimeType":"image/png","data":"AA=="}}]})];
        assert_eq!(gemini(&img, None), NON_TEXT_PART);
    }
}
