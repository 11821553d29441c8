//! Deterministic content generation: hashing, a tiny PRNG, completion text,
//! JSON values from schemas, embedding vectors, ids and base64.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Map, Value};

/// SplitMix64 PRNG: tiny, fast and good enough for stub content.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// Uniform-ish integer in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// Float in `[-1, 1)`.
    pub fn signed_unit(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// SplitMix64 finaliser.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a 64-bit hasher with helpers for JSON values.
#[derive(Clone, Debug)]
pub struct Hasher(u64);

impl Default for Hasher {
    fn default() -> Self {
        Hasher(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher {
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        for &x in b {
            self.0 ^= u64::from(x);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01B3);
        }
        self
    }

    pub fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes()).bytes(&[0xff])
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }

    /// Hashes a JSON value structurally (object keys are sorted by serde_json).
    pub fn value(&mut self, v: &Value) -> &mut Self {
        match v {
            Value::Null => self.bytes(b"n"),
            Value::Bool(b) => self.bytes(if *b { b"t" } else { b"f" }),
            Value::Number(n) => {
                let s = n.to_string();
                self.bytes(b"#").str(&s)
            }
            Value::String(s) => self.bytes(b"s").str(s),
            Value::Array(a) => {
                self.bytes(b"[");
                for x in a {
                    self.value(x);
                }
                self.bytes(b"]")
            }
            Value::Object(o) => {
                self.bytes(b"{");
                for (k, x) in o {
                    self.str(k);
                    self.value(x);
                }
                self.bytes(b"}")
            }
        }
    }

    pub fn finish(&self) -> u64 {
        mix(self.0)
    }
}

// Every word piece is exactly 4 characters (leading space + 3 letters, or
// leading space + 2 letters + '.'), so `tokens::text` of N pieces is exactly N
// (the very first piece drops its leading space: 4N-1 chars, still N tokens).
const WORDS: [&str; 64] = [
    " the", " and", " for", " are", " but", " not", " you", " all", " any", " can", " had", " her",
    " was", " one", " our", " out", " day", " get", " has", " him", " his", " how", " man", " new",
    " now", " old", " see", " two", " way", " who", " boy", " did", " its", " let", " put", " say",
    " she", " too", " use", " sun", " sky", " sea", " red", " big", " low", " top", " end", " far",
    " few", " key", " map", " net", " own", " run", " set", " try", " why", " yes", " box", " cat",
    " dog", " fox", " ice", " joy",
];
const ENDINGS: [&str; 10] = [
    " go.", " up.", " on.", " in.", " it.", " so.", " me.", " us.", " do.", " no.",
];
const STARTS: [&str; 16] = [
    " The", " And", " For", " But", " You", " All", " Our", " Now", " See", " Two", " She", " Its",
    " Few", " Yes", " Why", " How",
];

/// Generates `n` text pieces (one token each) from `seed`.
pub fn pieces(seed: u64, n: usize) -> Vec<Cow<'static, str>> {
    sentences(seed, n, |r| ENDINGS[(r % ENDINGS.len() as u64) as usize])
}

/// Generates `n` pieces that are each exactly one token in OpenAI's
/// `o200k_base` and `cl100k_base` encodings, and that stay separate tokens
/// when joined (every word starts with a space; a sentence ends with a
/// separate `"."` token). So the joined text encodes to exactly `n` tokens.
pub fn bpe_pieces(seed: u64, n: usize) -> Vec<Cow<'static, str>> {
    sentences(seed, n, |_| ".")
}

/// Sentences of 6–13 words drawn from `seed`, each closed by `ending(random)`, as `n` pieces.
fn sentences(seed: u64, n: usize, ending: impl Fn(u64) -> &'static str) -> Vec<Cow<'static, str>> {
    let mut rng = Rng::new(seed);
    let mut out: Vec<Cow<'static, str>> = Vec::with_capacity(n);
    let mut sentence_len = 0u64;
    let mut target = rng.range(6, 14);
    for i in 0..n {
        let r = rng.next_u64();
        let piece: &'static str = if sentence_len == 0 {
            STARTS[(r % STARTS.len() as u64) as usize]
        } else if sentence_len >= target || i + 1 == n {
            sentence_len = 0;
            target = rng.range(6, 14);
            out.push(Cow::Borrowed(ending(r)));
            continue;
        } else {
            WORDS[(r % WORDS.len() as u64) as usize]
        };
        sentence_len += 1;
        out.push(Cow::Borrowed(piece));
    }
    if let Some(Cow::Borrowed(s)) = out.first().cloned() {
        out[0] = Cow::Borrowed(&s[1..]);
    }
    out
}

/// Joins pieces into one string.
pub fn join(pieces: &[Cow<'static, str>]) -> String {
    let mut s = String::with_capacity(pieces.len() * 4);
    for p in pieces {
        s.push_str(p);
    }
    s
}

/// Truncates `pieces` before the first occurrence of any stop sequence.
/// Returns true if a stop sequence was found.
pub fn apply_stop(pieces: &mut Vec<Cow<'static, str>>, stops: &[String]) -> bool {
    if stops.is_empty() {
        return false;
    }
    let text = join(pieces);
    let cut = stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min();
    let Some(cut) = cut else { return false };
    let mut pos = 0usize;
    let mut keep = 0usize;
    let mut partial: Option<String> = None;
    for p in pieces.iter() {
        if pos + p.len() <= cut {
            pos += p.len();
            keep += 1;
        } else {
            if cut > pos {
                partial = Some(p[..cut - pos].to_string());
            }
            break;
        }
    }
    pieces.truncate(keep);
    if let Some(p) = partial {
        pieces.push(Cow::Owned(p));
    }
    true
}

/// A JSON object whose text is exactly `4 * n` characters (so it costs `n`
/// tokens): `{"answer":"<words>"}` padded with whitespace.
pub fn json_object_text(seed: u64, n: usize) -> String {
    if n < 4 {
        let mut s = String::with_capacity(4 * n.max(1));
        s.push('{');
        for _ in 0..(4 * n.max(1)).saturating_sub(2) {
            s.push(' ');
        }
        s.push('}');
        return s;
    }
    let words = join(&pieces(seed, n - 3));
    let mut s = String::with_capacity(4 * n);
    s.push_str("{\"answer\":\"");
    s.push_str(&words);
    s.push_str("\"}");
    while s.len() < 4 * n {
        s.insert(s.len() - 1, ' ');
    }
    s
}

/// Builds a JSON value matching (a practical subset of) a JSON schema.
pub fn value_from_schema(schema: &Value, rng: &mut Rng, depth: usize) -> Value {
    if depth > 6 {
        return Value::Null;
    }
    if let Some(Value::Array(options)) = schema.get("enum") {
        if !options.is_empty() {
            return options[(rng.next_u64() % options.len() as u64) as usize].clone();
        }
    }
    if let Some(c) = schema.get("const") {
        return c.clone();
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(Value::Array(options)) = schema.get(key) {
            if let Some(first) = options.first() {
                return value_from_schema(first, rng, depth + 1);
            }
        }
    }
    let ty = match schema.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("null"),
        _ if schema.get("properties").is_some() => "object",
        _ => "string",
    };
    match ty {
        "object" | "OBJECT" => {
            let mut m = Map::new();
            if let Some(Value::Object(props)) = schema.get("properties") {
                for (k, s) in props {
                    m.insert(k.clone(), value_from_schema(s, rng, depth + 1));
                }
            }
            Value::Object(m)
        }
        "array" | "ARRAY" => {
            let n = rng.range(1, 3);
            let item = schema.get("items").cloned().unwrap_or(Value::Null);
            Value::Array(
                (0..n)
                    .map(|_| value_from_schema(&item, rng, depth + 1))
                    .collect(),
            )
        }
        "integer" | "INTEGER" => Value::from(rng.range(1, 100)),
        "number" | "NUMBER" => Value::from(rng.range(1, 10_000) as f64 / 100.0),
        "boolean" | "BOOLEAN" => Value::Bool(rng.next_u64() & 1 == 1),
        "null" | "NULL" => Value::Null,
        _ => {
            let n = rng.range(1, 3) as usize;
            Value::String(join(&pieces(rng.next_u64(), n)))
        }
    }
}

/// Deterministic unit-length embedding of `dim` dimensions for `(model, text)`.
/// Shorter dimensions are a renormalised prefix of the full vector.
pub fn embedding(model: &str, input_hash: u64, dim: usize) -> Vec<f32> {
    let seed = Hasher::default().str(model).u64(input_hash).finish();
    let mut rng = Rng::new(seed);
    let mut v: Vec<f32> = (0..dim).map(|_| rng.signed_unit()).collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        for x in &mut v {
            *x /= norm;
        }
    }
    v
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn unique_u64() -> u64 {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    mix(n ^ mix(t ^ u64::from(std::process::id())))
}

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// `prefix` followed by `len` random alphanumerics (unique per call).
pub fn id(prefix: &str, len: usize) -> String {
    let mut rng = Rng::new(unique_u64());
    let mut s = String::with_capacity(prefix.len() + len);
    s.push_str(prefix);
    for _ in 0..len {
        s.push(ALNUM[(rng.next_u64() % ALNUM.len() as u64) as usize] as char);
    }
    s
}

/// A random (unique per call) version-4 UUID string.
pub fn uuid() -> String {
    let mut rng = Rng::new(unique_u64());
    let a = rng.next_u64();
    let b = rng.next_u64();
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0x0fff,
        0x8000 | ((b >> 48) & 0x3fff),
        b & 0xffff_ffff_ffff
    )
}

/// Current unix time in seconds.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn base64(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(B64[(n >> 18) as usize & 63] as char);
        out.push(B64[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            B64[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            B64[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

/// Little-endian f32 bytes, base64-encoded (OpenAI `encoding_format: base64`).
pub fn f32_base64(v: &[f32]) -> String {
    let mut bytes = Vec::with_capacity(v.len() * 4);
    for x in v {
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    base64(&bytes)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::tokens;

    #[test]
    fn pieces_cost_one_token_each() {
        for n in [1usize, 2, 5, 20, 60, 333] {
            let p = pieces(42 + n as u64, n);
            assert_eq!(p.len(), n);
            assert_eq!(tokens::text(&join(&p)), n as u64);
        }
        assert_eq!(pieces(1, 0).len(), 0);
    }

    #[test]
    fn pieces_are_deterministic() {
        assert_eq!(pieces(7, 30), pieces(7, 30));
        assert_ne!(pieces(7, 30), pieces(8, 30));
    }

    #[test]
    fn stop_truncates() {
        let mut p = pieces(3, 40);
        let text = join(&p);
        let stop = text[10..14].to_string();
        let cut = text.find(&stop).unwrap();
        assert!(apply_stop(&mut p, &[stop]));
        assert_eq!(join(&p), text[..cut]);
        let mut q = pieces(3, 40);
        assert!(!apply_stop(&mut q, &["zzzz".to_string()]));
        assert_eq!(q.len(), 40);
    }

    #[test]
    fn json_object_text_is_valid_and_sized() {
        for n in [1usize, 2, 3, 4, 5, 17, 50] {
            let s = json_object_text(n as u64, n);
            let v: Value = serde_json::from_str(&s).unwrap();
            assert!(v.is_object());
            assert_eq!(tokens::text(&s), n as u64, "{s:?}");
        }
    }

    #[test]
    fn base64_matches_known_vectors() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn embeddings_are_unit_and_deterministic() {
        let a = embedding("m", 1, 64);
        let b = embedding("m", 1, 64);
        assert_eq!(a, b);
        let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4);
        assert_ne!(embedding("m", 2, 64), a);
    }

    #[test]
    fn ids_are_unique() {
        assert_ne!(id("chatcmpl-", 29), id("chatcmpl-", 29));
        let u = uuid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
    }

    #[test]
    fn schema_values() {
        let schema = serde_json::json!({"type":"object","properties":{"city":{"type":"string"},"n":{"type":"integer"},"unit":{"enum":["c","f"]}}});
        let v = value_from_schema(&schema, &mut Rng::new(1), 0);
        assert!(v["city"].is_string());
        assert!(v["n"].is_u64());
        assert!(v["unit"] == "c" || v["unit"] == "f");
    }
}
