use super::*;
use crate::text;
use serde_json::json;

#[test]
fn chat_uses_the_vendor_tokenizer() {
    let req = json!({"model": "gpt-4o-mini", "messages": [
        {"role": "user", "content": "Tell me something about foxes."}
    ]});
    // The pinned contract count of the OpenAI stub.
    assert_eq!(
        prompt_tokens(Vendor::OpenAi, Api::Chat, "gpt-4o-mini", &req),
        14
    );
    // Gemini and DashScope compatibility layers: the approximation, no role.
    let approx = 3 + text("Tell me something about foxes.") + 3;
    assert_eq!(
        prompt_tokens(Vendor::Google, Api::Chat, "gemini-2.5-flash", &req),
        approx
    );
    assert_eq!(
        prompt_tokens(Vendor::DashScope, Api::Chat, "qwen-plus", &req),
        approx
    );
}

#[test]
fn chat_counts_tools_and_tolerates_garbage() {
    let tools = json!([{"type": "function", "function": {"name": "f"}}]);
    let req = json!({"messages": [{"role": "user", "content": "x"}], "tools": tools});
    let expected = 3 + 1 + 3 + text(&tools.to_string());
    assert_eq!(
        prompt_tokens(Vendor::Google, Api::Chat, "m", &req),
        expected
    );
    assert_eq!(
        prompt_tokens(Vendor::OpenAi, Api::Chat, "gpt-4o", &json!([1, 2])),
        0
    );
    assert_eq!(
        prompt_tokens(Vendor::OpenAi, Api::Chat, "gpt-4o", &json!({"messages": 3})),
        3
    );
}

#[test]
fn completions_and_embeddings_inputs() {
    let tk = Tokenizer::Cl100k;
    let m = "gpt-3.5-turbo-instruct";
    let p = |v: Value| prompt_tokens(Vendor::OpenAi, Api::Completions, m, &json!({"prompt": v}));
    assert_eq!(p(json!("hello world")), 2);
    assert_eq!(p(json!(["hello world", "tiktoken is great!"])), 2 + 6);
    assert_eq!(p(json!([1, 2, 3])), 3);
    assert_eq!(p(json!([[1, 2], [3]])), 3);
    let e = |v: Value| {
        prompt_tokens(
            Vendor::OpenAi,
            Api::Embeddings,
            "text-embedding-3-small",
            &json!({"input": v}),
        )
    };
    assert_eq!(e(json!("hello world")), tk.text("hello world"));
    assert_eq!(e(json!(["a", [1, 2, 3]])), 1 + 3);
    assert_eq!(e(json!(null)), 0);
}

#[test]
fn responses_instructions_and_items() {
    let t = Tokenizer::O200k;
    let req = json!({"instructions": "Be brief.", "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "hello world"}, {"type": "input_image"}]},
        {"type": "function_call_output", "call_id": "c", "output": "42"}
    ]});
    let expected = 3
        + (3 + t.text("developer") + t.text("Be brief."))
        + (3 + t.text("user") + t.text("hello world") + NON_TEXT_PART)
        + (3 + t.text("user") + t.text("42"));
    assert_eq!(
        prompt_tokens(Vendor::OpenAi, Api::Responses, "gpt-4o", &req),
        expected
    );
    let s = json!({"input": "hello world"});
    assert_eq!(
        prompt_tokens(Vendor::OpenAi, Api::Responses, "gpt-4o", &s),
        3 + 3 + t.text("user") + t.text("hello world")
    );
}

#[test]
fn gemini_generate_count_and_embed() {
    let tools = json!([{"functionDeclarations": [{"name": "f"}]}]);
    let req = json!({
        "contents": [{"role": "user", "parts": [{"text": "abcde"}]}],
        "system_instruction": {"parts": [{"text": "be nice"}]},
        "tools": tools,
    });
    let expected = 2 + 2 + text(&tools.to_string());
    assert_eq!(
        prompt_tokens(Vendor::Google, Api::GeminiGenerate, "g", &req),
        expected
    );
    let wrapped = json!({"generateContentRequest": req});
    assert_eq!(
        prompt_tokens(Vendor::Google, Api::GeminiCountTokens, "g", &wrapped),
        expected
    );
    let bare = json!({"contents": [{"parts": [{"text": "abcde"}]}]});
    assert_eq!(
        prompt_tokens(Vendor::Google, Api::GeminiCountTokens, "g", &bare),
        2
    );
    // embedContent counts the concatenated text: "ab" + "cd" is one token.
    let one = json!({"content": {"parts": [{"text": "ab"}, {"text": "cd"}]}});
    assert_eq!(
        prompt_tokens(Vendor::Google, Api::GeminiEmbed, "e", &one),
        1
    );
    let batch = json!({"requests": [one, {"content": {"parts": [{"text": "abcde"}]}}]});
    assert_eq!(
        prompt_tokens(Vendor::Google, Api::GeminiEmbed, "e", &batch),
        3
    );
}

#[test]
fn dashscope_native() {
    let msgs = json!({"input": {"messages": [{"role": "user", "content": "abcdefgh"}]}});
    assert_eq!(
        prompt_tokens(
            Vendor::DashScope,
            Api::DashScopeGeneration,
            "qwen-plus",
            &msgs
        ),
        3 + 2 + 3
    );
    let prompt = json!({"input": {"prompt": "abcdefgh"}, "parameters": {"tools": []}});
    assert_eq!(
        prompt_tokens(
            Vendor::DashScope,
            Api::DashScopeGeneration,
            "qwen-plus",
            &prompt
        ),
        8
    );
    let emb = json!({"input": {"texts": ["abcd", "abcde"]}});
    assert_eq!(
        prompt_tokens(
            Vendor::DashScope,
            Api::DashScopeEmbedding,
            "text-embedding-v3",
            &emb
        ),
        3
    );
}

#[test]
fn openai_vendor_strips_models_prefix() {
    assert_eq!(Vendor::OpenAi.tokenizer("models/gpt-4"), Tokenizer::Cl100k);
    assert_eq!(Vendor::Google.tokenizer("gpt-4"), Tokenizer::Approx);
}

#[test]
fn bounds_hold_and_are_exact_for_the_approximation() {
    let long = "lorem ipsum dolor ".repeat(1000);
    let one_piece = "x".repeat(20_000);
    let reqs = [
        (
            Api::Chat,
            json!({"messages": [{"role": "user", "content": long}], "tools": [{"type": "function", "function": {"name": "f"}}]}),
        ),
        (
            Api::Chat,
            json!({"messages": [{"role": "user", "name": "bob", "content": [{"type": "text", "text": one_piece}, {"type": "image_url"}]}]}),
        ),
        (
            Api::Completions,
            json!({"prompt": ["hello world", [1, 2, 3]]}),
        ),
        (
            Api::Responses,
            json!({"instructions": "Be brief.", "input": long}),
        ),
        (Api::Embeddings, json!({"input": one_piece})),
    ];
    for (api, req) in &reqs {
        for model in ["gpt-4o", "gpt-4"] {
            let exact = prompt_tokens(Vendor::OpenAi, *api, model, req);
            let b = prompt_bounds(Vendor::OpenAi, *api, model, req);
            assert!(
                b.floor <= exact && exact <= b.ceiling,
                "{api:?} {model} {b:?} {exact}"
            );
        }
        let exact = prompt_tokens(Vendor::Google, *api, "gemini-2.5-flash", req);
        let b = prompt_bounds(Vendor::Google, *api, "gemini-2.5-flash", req);
        assert!(b.is_exact() && b.floor == exact, "{api:?}");
    }
    // A megabyte of text is at least 8,192 tokens whatever it says: enough to refuse it
    // against a 1,000-token limit without counting.
    let mib = json!({"messages": [{"role": "user", "content": "a".repeat(1 << 20)}]});
    assert!(prompt_bounds(Vendor::OpenAi, Api::Chat, "gpt-4o", &mib).floor >= 8192);
}
