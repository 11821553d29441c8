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
