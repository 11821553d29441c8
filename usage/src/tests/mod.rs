//! Tracker tests over hand-written provider bodies (the shapes of `leaky-stubs`; the
//! integration test `filters/tests/usage_stubs.rs` drives the real stubs).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod estimate_chat;
mod fast;
mod fixtures;
mod member;
mod streams;
mod streams_native;

use super::*;
use leaky_config::Dialect;

/// Feeds `chunks`, returns the bytes forwarded downstream and the usage.
pub(super) fn run(
    mut t: UsageTracker,
    body: &[u8],
    chunks: &[usize],
    estimate: u64,
) -> (Vec<u8>, Usage) {
    let mut out = Vec::new();
    let mut rest = body;
    let mut sizes = chunks.iter().cycle();
    while !rest.is_empty() {
        let n = (*sizes.next().unwrap_or(&rest.len())).clamp(1, rest.len());
        let (c, r) = rest.split_at(n);
        match t.on_chunk(c) {
            Chunk::Pass => out.extend_from_slice(c),
            Chunk::Replace(b) => out.extend_from_slice(&b),
        }
        rest = r;
    }
    out.extend_from_slice(&t.on_end());
    (out, t.finish(estimate))
}

/// Google serves the native API under `/v1` and `/v1beta`: both are metered the same way.
#[test]
fn classify_gemini_native_is_version_agnostic() {
    use Surface::*;
    for (method, surface) in [
        ("generateContent", GeminiGenerate),
        ("streamGenerateContent?alt=sse", GeminiStreamGenerate),
        ("embedContent", GeminiEmbed),
        ("batchEmbedContents", GeminiEmbed),
        ("countTokens", GeminiCountTokens),
    ] {
        for version in ["/v1beta", "/v1"] {
            let path = format!("{version}/models/gemini-2.5-flash:{method}");
            assert_eq!(Surface::classify(Dialect::Google, &path), surface, "{path}");
        }
    }
    for version in ["/v1beta", "/v1"] {
        let path = format!("{version}/models");
        assert_eq!(Surface::classify(Dialect::Google, &path), Other, "{path}");
    }
}

/// `Surface::classify` as it was written with `str` searchers, before the byte scans.
fn classify_by_str(dialect: Dialect, path: &str) -> Surface {
    let path = path.split(['?', '#']).next().unwrap_or(path);
    let path = path.trim_end_matches('/');
    let last = path.rsplit('/').next().unwrap_or(path);
    if let Some((_, method)) = last.rsplit_once(':') {
        return match method {
            "generateContent" => Surface::GeminiGenerate,
            "streamGenerateContent" => Surface::GeminiStreamGenerate,
            "embedContent" | "batchEmbedContents" => Surface::GeminiEmbed,
            "countTokens" => Surface::GeminiCountTokens,
            _ => Surface::Other,
        };
    }
    if path.ends_with("/services/aigc/text-generation/generation")
        || path.ends_with("/services/aigc/multimodal-generation/generation")
    {
        return Surface::DashScopeGeneration;
    }
    if path.ends_with("/services/embeddings/text-embedding/text-embedding") {
        return Surface::DashScopeEmbedding;
    }
    let vendor = if path.contains("/v1beta/openai/") {
        Vendor::Google
    } else if path.contains("/compatible-mode/") {
        Vendor::DashScope
    } else {
        match dialect {
            Dialect::Openai => Vendor::OpenAi,
            Dialect::Google => Vendor::Google,
            Dialect::Dashscope => Vendor::DashScope,
        }
    };
    if path.ends_with("/chat/completions") {
        Surface::ChatCompletions(vendor)
    } else if path.ends_with("/completions") {
        Surface::Completions(vendor)
    } else if path.ends_with("/responses") {
        Surface::Responses(vendor)
    } else if path.ends_with("/embeddings") {
        Surface::Embeddings(vendor)
    } else {
        Surface::Other
    }
}

/// The byte-scanning `classify` answers what the `str` one did, for every path of four pieces from a
/// set that makes each branch and its near misses (a segment that only starts or ends like one,
/// repeats, a match at either end, a query, a fragment, trailing slashes, a method after `:`).
#[test]
fn classify_answers_what_the_str_version_did() {
    let pieces = [
        "",
        "v1beta",
        "openai",
        "compatible-mode",
        "xv1beta",
        "openaix",
        "chat",
        "completions",
        "responses",
        "embeddings",
        "m:generateContent",
        "m:countTokens?alt=sse",
        "a:b:embedContent",
        "services/aigc/text-generation/generation",
        "services/embeddings/text-embedding/text-embedding",
        "completions?x=/v1beta/openai/",
        "openai#/chat/completions",
        "compatible-mode/",
    ];
    let n = pieces.len();
    let mut checked = 0;
    for i in 0..n.pow(4) {
        let segs = [
            pieces[i % n],
            pieces[i / n % n],
            pieces[i / n / n % n],
            pieces[i / n / n / n],
        ];
        for lead in ["", "/"] {
            let path = format!("{lead}{}", segs.join("/"));
            for dialect in [Dialect::Openai, Dialect::Google, Dialect::Dashscope] {
                assert_eq!(
                    Surface::classify(dialect, &path),
                    classify_by_str(dialect, &path),
                    "{dialect:?} {path}"
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 6 * n.pow(4));
}

#[test]
fn classify_surfaces() {
    use Surface::*;
    let cases = [
        (
            Dialect::Openai,
            "/v1/chat/completions",
            ChatCompletions(Vendor::OpenAi),
        ),
        (
            Dialect::Openai,
            "/v1beta/openai/chat/completions",
            ChatCompletions(Vendor::Google),
        ),
        (
            Dialect::Google,
            "/v1beta/openai/chat/completions/",
            ChatCompletions(Vendor::Google),
        ),
        (
            Dialect::Openai,
            "/compatible-mode/v1/chat/completions",
            ChatCompletions(Vendor::DashScope),
        ),
        (
            Dialect::Dashscope,
            "/v1/chat/completions",
            ChatCompletions(Vendor::DashScope),
        ),
        (
            Dialect::Openai,
            "/v1/completions",
            Completions(Vendor::OpenAi),
        ),
        (Dialect::Openai, "/v1/responses", Responses(Vendor::OpenAi)),
        (
            Dialect::Openai,
            "/v1/embeddings?x=1",
            Embeddings(Vendor::OpenAi),
        ),
        (
            Dialect::Google,
            "/v1beta/openai/embeddings",
            Embeddings(Vendor::Google),
        ),
        (
            Dialect::Google,
            "/v1beta/models/gemini-2.5-flash:generateContent",
            GeminiGenerate,
        ),
        (
            Dialect::Google,
            "/v1beta/models/m:streamGenerateContent?alt=sse",
            GeminiStreamGenerate,
        ),
        (
            Dialect::Google,
            "/v1beta/models/text-embedding-004:embedContent",
            GeminiEmbed,
        ),
        (
            Dialect::Google,
            "/v1beta/models/e:batchEmbedContents",
            GeminiEmbed,
        ),
        (
            Dialect::Google,
            "/v1beta/models/m:countTokens",
            GeminiCountTokens,
        ),
        (Dialect::Google, "/v1beta/models/m:unknownMethod", Other),
        (
            Dialect::Dashscope,
            "/api/v1/services/aigc/text-generation/generation",
            DashScopeGeneration,
        ),
        (
            Dialect::Dashscope,
            "/api/v1/services/aigc/multimodal-generation/generation",
            DashScopeGeneration,
        ),
        (
            Dialect::Dashscope,
            "/api/v1/services/embeddings/text-embedding/text-embedding",
            DashScopeEmbedding,
        ),
        (Dialect::Openai, "/v1/models", Other),
        (Dialect::Openai, "/v1/responses/resp_1", Other),
        (Dialect::Openai, "/healthz", Other),
    ];
    for (d, p, want) in cases {
        assert_eq!(Surface::classify(d, p), want, "{d:?} {p}");
    }
    assert!(!Other.is_metered() && !GeminiCountTokens.is_metered() && GeminiEmbed.is_metered());
    assert!(Completions(Vendor::Google).supports_include_usage());
    assert!(!Responses(Vendor::OpenAi).supports_include_usage());
    assert_eq!(
        GeminiGenerate.tokenizer("gpt-4o"),
        leaky_tokenize::Tokenizer::Approx
    );
    assert_eq!(Other.vendor(), None);
    assert_eq!(
        Usage {
            prompt_tokens: 2,
            completion_tokens: 3,
            reported: true
        }
        .total(),
        5
    );
}

/// `from_json` (UTF-8 checked once, then `from_str`) reads exactly what `from_slice` reads and
/// refuses exactly what it refuses, with the same error: valid documents, non-ASCII and escaped
/// text, and bytes that are not UTF-8 inside and outside strings.
#[test]
fn from_json_reads_and_refuses_as_from_slice() {
    let docs: &[&[u8]] = &[
        br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello."}],"max_tokens":16}"#,
        "{\"content\":\"h\u{e9}llo w\u{f6}rld \u{4f60}\u{597d} \u{1f600}\"}".as_bytes(),
        br#"{"a":"line \"two\" \u00e9\ud83d\ude00","b":[1,-2.5e+3,true,null]}"#,
        b"{\"content\":\"caf\xe9\"}",
        b"{\"content\":\"ok\"}\xff",
        b"{\"content\":\"\xf0\x9f\x98\"}",
        b"",
        b"not json",
        br#"{"truncated":"#,
    ];
    for doc in docs {
        let ours = crate::extract::from_json::<serde_json::Value>(doc);
        let theirs = serde_json::from_slice::<serde_json::Value>(doc);
        assert_eq!(
            ours.as_ref().ok(),
            theirs.as_ref().ok(),
            "{}",
            String::from_utf8_lossy(doc)
        );
        assert_eq!(
            ours.err().map(|e| e.to_string()),
            theirs.err().map(|e| e.to_string()),
            "{}",
            String::from_utf8_lossy(doc)
        );
    }
}
