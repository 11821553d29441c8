use super::*;
use leaky_tokenize::{Tokenizer, Vendor};
use serde_json::json;

fn est(surface: Surface, model: &str, v: Value) -> RequestCost {
    estimate(surface, model, v.to_string().as_bytes(), false)
}

#[test]
fn chat_prompt_cap_stream_and_usage_flag() {
    let s = Surface::ChatCompletions(Vendor::OpenAi);
    let msgs = json!([{"role": "user", "content": "Tell me something about foxes."}]);
    let c = est(
        s,
        "gpt-4o-mini",
        json!({"messages": msgs, "max_tokens": 50, "n": 2}),
    );
    assert_eq!(c.prompt_tokens, 14);
    assert_eq!(c.max_completion, Some(100));
    assert!(!c.stream && !c.wants_usage);
    let c = est(
        s,
        "gpt-4o-mini",
        json!({"messages": msgs, "max_tokens": 50, "max_completion_tokens": 20,
               "stream": true, "stream_options": {"include_usage": true}}),
    );
    assert_eq!(c.max_completion, Some(20));
    assert!(c.stream && c.wants_usage);
    assert_eq!(
        est(s, "gpt-4o", json!({"messages": msgs})).max_completion,
        None
    );
    assert_eq!(c.reserve(1000), 14 + 20);
    assert_eq!(RequestCost::default().reserve(7), 7);
}

#[test]
fn legacy_completions_default_to_sixteen_per_choice_and_prompt() {
    let s = Surface::Completions(Vendor::OpenAi);
    let m = "gpt-3.5-turbo-instruct";
    let c = est(s, m, json!({"prompt": "hello world"}));
    assert_eq!((c.prompt_tokens, c.max_completion), (2, Some(16)));
    let c = est(s, m, json!({"prompt": ["a", "b"], "n": 3, "max_tokens": 5}));
    assert_eq!(c.max_completion, Some(30));
    let c = est(s, m, json!({"prompt": [1, 2, 3], "max_tokens": 5}));
    assert_eq!((c.prompt_tokens, c.max_completion), (3, Some(5)));
}

#[test]
fn responses_embeddings_gemini_and_dashscope_caps() {
    let r = est(
        Surface::Responses(Vendor::OpenAi),
        "gpt-4o",
        json!({"input": "hi", "max_output_tokens": 64, "stream": true}),
    );
    assert_eq!((r.max_completion, r.stream), (Some(64), true));
    let t = Tokenizer::O200k;
    assert_eq!(r.prompt_tokens, 3 + 3 + t.text("user") + t.text("hi"));
    let e = est(
        Surface::Embeddings(Vendor::OpenAi),
        "text-embedding-3-small",
        json!({"input": ["a", "b"]}),
    );
    assert_eq!((e.prompt_tokens, e.max_completion), (2, Some(0)));
    let g = json!({"contents": [{"parts": [{"text": "abcdefgh"}]}],
                   "generationConfig": {"maxOutputTokens": 100, "candidateCount": 2}});
    let c = est(Surface::GeminiGenerate, "gemini-2.5-flash", g.clone());
    assert_eq!(
        (c.prompt_tokens, c.max_completion, c.stream),
        (2, Some(200), false)
    );
    assert!(est(Surface::GeminiStreamGenerate, "gemini-2.5-flash", g).stream);
    let snake = json!({"contents": [], "generation_config": {"max_output_tokens": 9}});
    assert_eq!(
        est(Surface::GeminiGenerate, "g", snake).max_completion,
        Some(9)
    );
    let d = json!({"model": "qwen-plus", "input": {"prompt": "abcd"},
                   "parameters": {"max_tokens": 30, "incremental_output": true}});
    let c = est(Surface::DashScopeGeneration, "qwen-plus", d.clone());
    assert_eq!((c.prompt_tokens, c.max_completion), (3 + 1 + 3, Some(30)));
    assert!(c.stream && c.incremental);
    let plain = json!({"input": {"prompt": "abcd"}});
    assert!(!est(Surface::DashScopeGeneration, "qwen-plus", plain.clone()).stream);
    assert!(
        estimate(
            Surface::DashScopeGeneration,
            "qwen-plus",
            plain.to_string().as_bytes(),
            true
        )
        .stream
    );
}

#[test]
fn unmetered_and_malformed_bodies() {
    let c = est(
        Surface::Other,
        "x",
        json!({"messages": [{"content": "abc"}]}),
    );
    assert_eq!(
        c,
        RequestCost {
            max_completion: Some(0),
            choices: 1,
            ..RequestCost::default()
        }
    );
    let c = est(Surface::GeminiCountTokens, "g", json!({"contents": []}));
    assert_eq!((c.prompt_tokens, c.max_completion), (0, Some(0)));
    let junk = b"{\"messages\": [ not json at all";
    let c = estimate(
        Surface::ChatCompletions(Vendor::OpenAi),
        "gpt-4o",
        junk,
        false,
    );
    assert_eq!(c.prompt_tokens, (junk.len() as u64).div_ceil(4));
    assert_eq!(c.max_completion, None);
    let c = estimate(Surface::Embeddings(Vendor::OpenAi), "e", b"\xff\xfe", false);
    assert_eq!((c.prompt_tokens, c.max_completion), (1, Some(0)));
    assert_eq!(
        estimate(Surface::GeminiGenerate, "g", b"[]", false).prompt_tokens,
        0
    );
}

#[test]
fn include_usage_injection_keeps_every_other_field() {
    let body = json!({"model": "gpt-4o", "stream": true, "temperature": 0.5,
        "messages": [{"role": "user", "content": "hi \"there\" \u{e9}"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "stream_options": {"include_obfuscation": false}, "metadata": {"a": [1, 2, null]}});
    let out = with_include_usage(body.to_string().as_bytes()).unwrap();
    let mut got: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(got["stream_options"]["include_usage"], json!(true));
    assert_eq!(got["stream_options"]["include_obfuscation"], json!(false));
    got["stream_options"]
        .as_object_mut()
        .unwrap()
        .remove("include_usage");
    assert_eq!(got, body);
    // No stream_options at all, or explicitly false: set.
    let plain = json!({"stream": true, "prompt": "x", "model": "m"});
    let out: Value =
        serde_json::from_slice(&with_include_usage(plain.to_string().as_bytes()).unwrap()).unwrap();
    assert_eq!(out["stream_options"], json!({"include_usage": true}));
    assert_eq!(out["prompt"], json!("x"));
    let off = json!({"stream": true, "messages": [], "stream_options": {"include_usage": false}});
    assert!(with_include_usage(off.to_string().as_bytes()).is_some());
}

#[test]
fn include_usage_not_applicable() {
    let none = |v: Value| assert_eq!(with_include_usage(v.to_string().as_bytes()), None, "{v}");
    none(json!({"messages": [], "stream": false}));
    none(json!({"messages": []}));
    none(json!({"messages": [], "stream": true, "stream_options": {"include_usage": true}}));
    none(json!({"messages": [], "stream": true, "stream_options": "yes"}));
    none(json!({"input": "hi", "stream": true}));
    none(json!({"contents": [], "stream": true}));
    none(json!([1, 2]));
    assert_eq!(with_include_usage(b"{nope"), None);
}

#[test]
fn choices_multiply_the_default_completion_of_an_uncapped_request() {
    let msgs = json!([{"role": "user", "content": "hi"}]);
    let chat = Surface::ChatCompletions(Vendor::OpenAi);
    let c = est(chat, "gpt-4o", json!({"messages": msgs, "n": 3}));
    assert_eq!((c.max_completion, c.choices), (None, 3));
    assert_eq!(c.reserve(100), c.prompt_tokens + 300);
    let c = est(
        chat,
        "gpt-4o",
        json!({"messages": msgs, "n": 3, "max_tokens": 10}),
    );
    assert_eq!(
        (c.max_completion, c.reserve(100)),
        (Some(30), c.prompt_tokens + 30)
    );
    let g = est(
        Surface::GeminiGenerate,
        "gemini-2.5-flash",
        json!({"contents": [], "generationConfig": {"candidateCount": 4}}),
    );
    assert_eq!((g.max_completion, g.choices), (None, 4));
    let q = est(
        Surface::DashScopeGeneration,
        "qwen-plus",
        json!({"input": {"messages": msgs}, "parameters": {"n": 2}}),
    );
    assert_eq!((q.max_completion, q.choices), (None, 2));
    let compat = Surface::ChatCompletions(Vendor::Google);
    assert_eq!(
        est(
            compat,
            "gemini-2.5-flash",
            json!({"messages": msgs, "n": 5})
        )
        .choices,
        5
    );
    assert_eq!(
        est(chat, "gpt-4o", json!({"messages": msgs, "n": 0})).choices,
        1
    );
    assert_eq!(est(chat, "gpt-4o", json!({"messages": msgs})).choices, 1);
    assert_eq!(
        choices_field(Surface::GeminiGenerate),
        "generationConfig.candidateCount"
    );
}

#[test]
fn completion_cap_goes_in_each_dialects_own_field() {
    let cap = |s: Surface, model: &str, v: Value| -> Option<Value> {
        with_completion_cap(s, model, v.to_string().as_bytes(), 77)
            .map(|b| serde_json::from_slice(&b).unwrap())
    };
    let msgs = json!([{"role": "user", "content": "hi"}]);
    let chat = Surface::ChatCompletions(Vendor::OpenAi);
    let out = cap(
        chat,
        "gpt-4o",
        json!({"model": "gpt-4o", "messages": msgs, "n": 2}),
    )
    .unwrap();
    assert_eq!(
        (out["max_tokens"].as_u64(), out["n"].as_u64()),
        (Some(77), Some(2))
    );
    assert!(out.get("max_completion_tokens").is_none());
    let out = cap(chat, "o3-mini", json!({"messages": msgs})).unwrap();
    assert_eq!(out["max_completion_tokens"], json!(77));
    assert!(out.get("max_tokens").is_none());
    let out = cap(
        Surface::ChatCompletions(Vendor::Google),
        "o1-lookalike",
        json!({"messages": msgs}),
    );
    assert_eq!(out.unwrap()["max_tokens"], json!(77));
    let out = cap(
        Surface::Responses(Vendor::OpenAi),
        "gpt-4o",
        json!({"input": "hi"}),
    )
    .unwrap();
    assert_eq!(out["max_output_tokens"], json!(77));
    let out = cap(
        Surface::GeminiGenerate,
        "gemini-2.5-flash",
        json!({"contents": [], "generationConfig": {"candidateCount": 2}}),
    )
    .unwrap();
    assert_eq!(
        out["generationConfig"],
        json!({"candidateCount": 2, "maxOutputTokens": 77})
    );
    let out = cap(
        Surface::GeminiStreamGenerate,
        "gemini-2.5-flash",
        json!({"contents": []}),
    );
    assert_eq!(
        out.unwrap()["generationConfig"]["maxOutputTokens"],
        json!(77)
    );
    let out = cap(
        Surface::DashScopeGeneration,
        "qwen-plus",
        json!({"input": {}}),
    )
    .unwrap();
    assert_eq!(out["parameters"]["max_tokens"], json!(77));
    // Already capped, not generating, not JSON: untouched.
    assert!(cap(
        chat,
        "gpt-4o",
        json!({"messages": msgs, "max_completion_tokens": 5})
    )
    .is_none());
    assert!(cap(
        Surface::Embeddings(Vendor::OpenAi),
        "e",
        json!({"input": "x"})
    )
    .is_none());
    assert!(with_completion_cap(chat, "gpt-4o", b"{nope", 5).is_none());
}

#[test]
fn floor_estimate_bounds_the_prompt_and_keeps_everything_else() {
    let chat = Surface::ChatCompletions(Vendor::OpenAi);
    let body = json!({"model": "gpt-4o", "max_tokens": 7, "stream": true,
        "messages": [{"role": "user", "content": "x".repeat(100_000)}]});
    let bytes = body.to_string();
    let exact = estimate(chat, "gpt-4o", bytes.as_bytes(), false);
    let (floor, is_exact) = estimate_floor(chat, "gpt-4o", bytes.as_bytes(), false);
    assert!(!is_exact);
    assert!(floor.prompt_tokens <= exact.prompt_tokens);
    // 100,000 bytes of text: at least 100,000 / 128 tokens.
    assert!(floor.prompt_tokens >= 100_000 / 128);
    assert_eq!(
        RequestCost {
            prompt_tokens: exact.prompt_tokens,
            ..floor
        },
        exact
    );
    // The approximation (Gemini, Qwen) is cheap: its floor is the exact count.
    let gemini = Surface::ChatCompletions(Vendor::Google);
    let (g, is_exact) = estimate_floor(gemini, "gemini-2.5-flash", bytes.as_bytes(), false);
    assert!(is_exact);
    assert_eq!(
        g,
        estimate(gemini, "gemini-2.5-flash", bytes.as_bytes(), false)
    );
    // Not JSON: bytes / 4 either way.
    let junk = b"{ not json";
    assert_eq!(
        estimate_floor(chat, "gpt-4o", junk, false),
        (estimate(chat, "gpt-4o", junk, false), true)
    );
}

#[test]
fn completion_steps_read_each_surfaces_own_fields() {
    let fields = json!({
        "max_tokens": 10, "n": 3, "best_of": 5, "prompt": ["a", "b"],
        "max_output_tokens": 7,
        "generation_config": {"max_output_tokens": 4, "candidate_count": 2},
        "parameters": {"max_tokens": 6, "n": 2, "incremental_output": true},
    });
    let o = fields.as_object().unwrap();
    let step = |surface: Surface, sse: bool| {
        let mut cost = RequestCost::default();
        completion(surface, o, sse, &mut cost);
        cost
    };
    let chat = step(Surface::ChatCompletions(Vendor::OpenAi), false);
    assert_eq!((chat.choices, chat.max_completion), (3, Some(30)));
    // max(n, best_of) per prompt, two prompts.
    let legacy = step(Surface::Completions(Vendor::OpenAi), false);
    assert_eq!((legacy.choices, legacy.max_completion), (10, Some(100)));
    let responses = step(Surface::Responses(Vendor::OpenAi), false);
    assert_eq!(responses.max_completion, Some(7));
    let gemini = step(Surface::GeminiGenerate, false);
    assert_eq!((gemini.choices, gemini.max_completion), (2, Some(8)));
    let dash = step(Surface::DashScopeGeneration, false);
    assert_eq!((dash.choices, dash.max_completion), (2, Some(12)));
    assert!(dash.incremental && dash.stream);
    assert_eq!(
        step(Surface::Embeddings(Vendor::OpenAi), false).max_completion,
        Some(0)
    );
}

#[test]
fn completion_steps_without_fields_default_to_one_uncapped_choice() {
    let o = Map::new();
    let mut gemini = RequestCost::default();
    gemini_completion(&o, &mut gemini);
    assert_eq!((gemini.choices, gemini.max_completion), (1, None));
    let mut dash = RequestCost::default();
    dashscope_completion(&o, true, &mut dash);
    assert_eq!((dash.choices, dash.max_completion), (1, None));
    assert!(dash.stream && !dash.incremental);
    // Legacy completions default to 16 tokens.
    let mut legacy = RequestCost::default();
    legacy_completion(&o, &mut legacy);
    assert_eq!((legacy.choices, legacy.max_completion), (1, Some(16)));
}

#[test]
fn unmetered_and_not_json_costs() {
    assert_eq!(
        unmetered(),
        RequestCost {
            max_completion: Some(0),
            choices: 1,
            ..RequestCost::default()
        }
    );
    let chat = not_json(Surface::ChatCompletions(Vendor::OpenAi), 9, true);
    assert_eq!((chat.prompt_tokens, chat.max_completion), (3, None));
    assert!(chat.stream);
    let emb = not_json(Surface::Embeddings(Vendor::OpenAi), 8, false);
    assert_eq!((emb.prompt_tokens, emb.max_completion), (2, Some(0)));
}
