//! Token counting shared by the gateway's estimates and the provider stubs.
//!
//! The Gemini and Qwen stubs never run a real tokenizer. Instead every piece of text costs
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
//! The stubs build generated completion text from 4-character pieces, so
//! `text(content)` equals their reported completion tokens.
//!
//! The OpenAI stub itself (not the compatibility layers of Gemini and Qwen)
//! counts with real BPE encodings instead: see [`Tokenizer`].
//!
//! [`prompt_tokens`] applies the rule of a provider surface ([`Vendor`] and
//! [`Api`]) to a parsed request body: for a stub upstream it equals the
//! prompt tokens the stub reports. [`prompt_bounds`] bounds that count from the
//! byte length of the texts (no BPE runs), and a BPE count is linear in the
//! text with bounded memory (texts go to tiktoken in [`segments`]).

mod approx;
mod bpe;
mod prompt;

pub use approx::{
    chat, chat_message, content, gemini, gemini_content, text, NON_TEXT_PART, PER_MESSAGE,
    PER_NAME, REPLY_PRIMING,
};
pub use bpe::{segments, warm_up, Tokenizer, SEGMENT_BYTES};
pub use prompt::{input_tokens, prompt_bounds, prompt_tokens, Api, PromptBounds, Vendor};
