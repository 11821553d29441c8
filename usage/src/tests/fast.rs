//! The fast chunk reader against serde's: whatever the fast path reads must have exactly the
//! effect serde's reading has, on real chunks and on thousands of mutations of them (anything it
//! is unsure of it must leave to serde).

use crate::extract::{openai_fast, openai_serde, Accum, Doc};
use crate::fast::{openai_chunk, Chunk};

/// Real chunk shapes: the stubs' (and OpenAI's) members and values, escapes, non-ASCII text,
/// several choices, legacy completions, reasoning, tool calls and usage chunks (the last two are
/// serde's).
const SAMPLES: &[&str] = &[
    r#"{"choices":[{"delta":{"content":"","refusal":null,"role":"assistant"},"finish_reason":null,"index":0,"logprobs":null}],"created":1796071824,"id":"chatcmpl-XLyvbuSzgqoECmFKA3OZG0FL4Scas","model":"gpt-4o-mini","object":"chat.completion.chunk","service_tier":"default","system_fingerprint":"fp_stub0001","usage":null}"#,
    r#"{"choices":[{"delta":{"content":" map"},"finish_reason":null,"index":0,"logprobs":null}],"created":1796071824,"id":"chatcmpl-XLyvbuSzgqoECmFKA3OZG0FL4Scas","model":"gpt-4o-mini","object":"chat.completion.chunk","service_tier":"default","system_fingerprint":"fp_stub0001","usage":null}"#,
    r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"line one\nline \"two\" \u00e9\ud83d\ude00"},"finish_reason":null}]}"#,
    r#"{"id":"c1","choices":[{"index":1,"delta":{"content":"héllo wörld — 你好"}},{"index":0,"delta":{"content":"b"}}]}"#,
    r#" { "choices" : [ { "index" : 0 , "delta" : { "reasoning_content" : "think" , "content" : null } } ] , "usage" : null } "#,
    r#"{"choices":[{"text":"legacy text","index":0,"logprobs":null,"finish_reason":null}],"model":"gpt-3.5-turbo-instruct"}"#,
    r#"{"choices":[{"delta":{"role":"assistant","tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"a\""}}]},"index":0}]}"#,
    r#"{"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":34,"total_tokens":46}}"#,
    r#"{"choices":[{"delta":{},"finish_reason":"stop","index":0}],"usage":{"prompt_tokens":1,"completion_tokens":2}}"#,
    r#"{"choices":null,"x":[1,-2.5e+3,true,false,null,{"y":[[],{}]}],"z":"\/\b\f\r\t"}"#,
    r#"{"choices":[{"message":{"content":"whole"},"index":0}]}"#,
    r#"{"choices":[{"delta":{"content":["a",{"text":"b"}]},"index":0}]}"#,
    r#"{"choices":[{"delta":{"content":"a"}},{"delta":{"content":"b"}},{"delta":{"content":"c"}},{"delta":{"content":"d"}},{"delta":{"content":"e"}}]}"#,
    r#"{"choices":[{"delta":{"content":"x"},"index":4294967295}]}"#,
    r#"{"choices":[{"delta":{"content":"x"},"index":4294967296}]}"#,
    r#"[DONE]"#,
];

/// What serde's reader does with `data`, and what the reader with the fast path does.
fn both(data: &[u8]) -> ((Doc, String), Option<(Doc, String)>) {
    let mut slow = Accum::default();
    let d = openai_serde(&mut slow, data);
    let mut c = Chunk::default();
    let fast = openai_chunk(data, &mut c).then(|| {
        let mut acc = Accum::default();
        (openai_fast(&mut acc, &c), format!("{acc:?}"))
    });
    ((d, format!("{slow:?}")), fast)
}

fn check(data: &[u8]) -> bool {
    let (slow, fast) = both(data);
    if let Some(fast) = fast {
        assert_eq!(
            fast,
            slow,
            "fast and serde differ on {:?}",
            String::from_utf8_lossy(data)
        );
        return true;
    }
    false
}

#[test]
fn the_fast_path_reads_plain_chunks_as_serde_does_and_leaves_the_rest() {
    let taken: Vec<bool> = SAMPLES.iter().map(|s| check(s.as_bytes())).collect();
    // Plain text chunks are read fast (escapes and non-ASCII text included); tool calls, usage,
    // text parts, more than four choices and an index beyond u32 are left to serde.
    assert_eq!(
        taken,
        [
            true, true, true, true, true, true, false, false, false, true, true, false, false,
            true, false, false
        ]
    );
}

/// A small deterministic generator (xorshift64*), so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// `sample` with one to three random edits: a byte removed, replaced by a piece, or a piece inserted
/// (pieces from [`JSON_PIECES`] and `extra`).
fn mutate(rng: &mut Rng, sample: &[u8], extra: &[&[u8]]) -> Vec<u8> {
    let piece = |rng: &mut Rng| {
        let i = rng.below(JSON_PIECES.len() + extra.len());
        JSON_PIECES
            .get(i)
            .copied()
            .unwrap_or_else(|| extra[i - JSON_PIECES.len()])
    };
    let mut b = sample.to_vec();
    for _ in 0..1 + rng.below(3) {
        let at = rng.below(b.len() + 1);
        match rng.below(3) {
            0 if at < b.len() => {
                b.remove(at);
            }
            1 if at < b.len() => {
                let p = piece(rng);
                b.splice(at..at + 1, p.iter().copied());
            }
            _ => {
                let p = piece(rng);
                b.splice(at..at, p.iter().copied());
            }
        }
    }
    b
}

/// Bytes a mutation inserts: JSON's structure, escapes, digits, exponents, controls, non-ASCII.
const JSON_PIECES: &[&[u8]] = &[
    b"\"",
    b"\\",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b" ",
    b"\n",
    b"0",
    b"1",
    b"-",
    b".",
    b"e",
    b"+",
    b"null",
    b"true",
    b"\\u00e9",
    b"\\ud83d",
    b"\\x",
    b"\x01",
    b"\xc3\xa9",
    b"\xff",
    b"01",
    b"1e5",
    b"1e400",
    b"-0.5",
    b"tru",
    b"nul",
];

/// Members of stream chunks a mutation inserts (besides [`JSON_PIECES`]).
const PIECES: &[&[u8]] = &[
    b"\"index\":7,",
    b"\"content\":\"dup\",",
    b"\"usage\":null,",
    b"\"delta\":null,",
    b"\"message\":{},",
    b"\"choices\":[],",
];

#[test]
fn mutated_chunks_read_fast_always_read_as_serde_reads_them() {
    fuzz(0x9E37_79B9_7F4A_7C15, 40_000, SAMPLES, PIECES, check);
}

/// `rounds` mutations of the samples in turn (pieces: [`JSON_PIECES`] and `pieces`), each given to `check` (which panics on a difference
/// and says whether the fast path took it). The mutations must exercise both outcomes: many still
/// taken by the fast path, many left to the general one.
pub(super) fn fuzz(
    seed: u64,
    rounds: usize,
    samples: &[&str],
    pieces: &[&[u8]],
    mut check: impl FnMut(&[u8]) -> bool,
) {
    let mut rng = Rng(seed);
    let mut fast = 0;
    for round in 0..rounds {
        let b = mutate(&mut rng, samples[round % samples.len()].as_bytes(), pieces);
        if check(&b) {
            fast += 1;
        }
    }
    assert!(
        fast > rounds / 20 && fast < rounds * 19 / 20,
        "{fast} of {rounds} taken by the fast path"
    );
}
