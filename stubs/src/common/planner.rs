//! Completion planning: request seeds, lengths, stop sequences and the
//! generated text split into stream pieces.

use std::borrow::Cow;

use serde_json::Value;

use crate::gen::{self, Hasher, Rng};
use crate::tokens::Tokenizer;

#[derive(Clone, Debug)]
pub enum Format {
    Text,
    JsonObject,
    JsonSchema(Value),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    Stop,
    Length,
}

/// One generated answer, already split into stream pieces.
#[derive(Clone, Debug)]
pub struct Completion {
    pub pieces: Vec<Cow<'static, str>>,
    pub finish: Finish,
    /// `tokens::text` of the joined pieces.
    pub tokens: u64,
}

impl Completion {
    pub fn text(&self) -> String {
        gen::join(&self.pieces)
    }
}

/// Seed for a request: hash of the prompt value(s) and the client seed.
pub fn request_seed(prompt: &[&Value], seed: Option<i64>) -> u64 {
    let mut h = Hasher::default();
    for v in prompt {
        h.value(v);
    }
    h.u64(seed.unwrap_or(0) as u64);
    h.finish()
}

/// Default completion length for a seed: 20..=60 tokens.
pub fn default_length(seed: u64) -> usize {
    Rng::new(seed ^ 0x5EED).range(20, 60) as usize
}

fn chunk_ascii_4(s: String) -> Vec<Cow<'static, str>> {
    let mut out = Vec::with_capacity(s.len() / 4 + 1);
    let mut cur = String::with_capacity(4);
    for c in s.chars() {
        cur.push(c);
        if cur.chars().count() == 4 {
            out.push(Cow::Owned(std::mem::take(&mut cur)));
        }
    }
    if !cur.is_empty() {
        out.push(Cow::Owned(cur));
    }
    out
}

/// Generates a completion for `seed`: `target` tokens (or the default
/// length), capped at `max` (finish `Length`), truncated at the first stop
/// sequence (finish `Stop`). `tk` decides how pieces are built and counted:
/// with a BPE encoding each text piece is exactly one token.
pub fn complete(
    seed: u64,
    target: Option<usize>,
    max: Option<u64>,
    stops: &[String],
    format: &Format,
    tk: Tokenizer,
) -> Completion {
    let want = target.unwrap_or_else(|| default_length(seed));
    let (n, capped) = match max {
        Some(m) if (m as usize) < want => (m as usize, true),
        _ => (want, false),
    };
    let finish = if capped { Finish::Length } else { Finish::Stop };
    let pieces = match format {
        Format::Text => {
            let mut p = if tk.is_bpe() {
                gen::bpe_pieces(seed, n)
            } else {
                gen::pieces(seed, n)
            };
            if gen::apply_stop(&mut p, stops) {
                let tokens = tk.text(&gen::join(&p));
                return Completion {
                    pieces: p,
                    finish: Finish::Stop,
                    tokens,
                };
            }
            p
        }
        Format::JsonObject => chunk_ascii_4(gen::json_object_text(seed, n)),
        Format::JsonSchema(schema) => {
            let v = gen::value_from_schema(schema, &mut Rng::new(seed), 0);
            chunk_ascii_4(v.to_string())
        }
    };
    let tokens = match format {
        Format::Text => n as u64,
        _ => tk.text(&gen::join(&pieces)),
    };
    Completion {
        pieces,
        finish: if matches!(format, Format::JsonSchema(_)) {
            Finish::Stop
        } else {
            finish
        },
        tokens,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::tokens;

    #[test]
    fn completion_respects_target_max_and_stop() {
        let a = Tokenizer::Approx;
        let c = complete(1, Some(10), None, &[], &Format::Text, a);
        assert_eq!(c.tokens, 10);
        assert_eq!(c.finish, Finish::Stop);
        assert_eq!(tokens::text(&c.text()), 10);
        let c = complete(1, Some(10), Some(4), &[], &Format::Text, a);
        assert_eq!(c.tokens, 4);
        assert_eq!(c.finish, Finish::Length);
        let d = complete(1, None, None, &[], &Format::Text, a);
        assert!((20..=60).contains(&d.tokens));
        let j = complete(9, Some(12), None, &[], &Format::JsonObject, a);
        assert_eq!(j.tokens, 12);
        let _: Value = serde_json::from_str(&j.text()).unwrap();
    }

    #[test]
    fn bpe_completions_encode_to_exactly_the_reported_count() {
        for tk in [Tokenizer::O200k, Tokenizer::Cl100k] {
            for seed in 0..200u64 {
                for n in [1usize, 2, 7, 20, 61] {
                    let c = complete(seed, Some(n), None, &[], &Format::Text, tk);
                    assert_eq!(c.tokens, n as u64);
                    assert_eq!(c.pieces.len(), n);
                    assert_eq!(
                        tk.text(&c.text()),
                        n as u64,
                        "{tk:?} seed {seed} n {n}: {:?}",
                        c.text()
                    );
                    for p in &c.pieces {
                        assert_eq!(tk.text(p), 1, "{tk:?} piece {p:?}");
                    }
                }
            }
            let j = complete(3, Some(12), None, &[], &Format::JsonObject, tk);
            assert_eq!(j.tokens, tk.text(&j.text()));
        }
    }
}
