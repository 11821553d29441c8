//! Usage accounting against the real provider stubs: every surface, streaming and not; the raw
//! bytes go through `UsageTracker` in small random chunks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod usage_stubs_support;

use leaky_config::Dialect;
use leaky_usage::{estimate, with_include_usage, Surface, Usage, UsageTracker};
use serde_json::{json, Value};
use usage_stubs_support::{check, send, stubs, track, with, Call};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_surface_of_every_stub() {
    let s = stubs().await;
    let msgs = json!([{"role": "system", "content": "You are terse."},
                      {"role": "user", "content": "Tell me something about foxes."}]);
    let stream = json!({"stream": true});
    // Chat on each provider: the estimate equals the stub's prompt count.
    for (dialect, addr, path, model) in [
        (
            Dialect::Openai,
            s.openai,
            "/v1/chat/completions",
            "gpt-4o-mini",
        ),
        (Dialect::Openai, s.openai, "/v1/chat/completions", "gpt-4"),
        (
            Dialect::Google,
            s.gemini,
            "/v1beta/openai/chat/completions",
            "gemini-2.5-flash",
        ),
        (
            Dialect::Dashscope,
            s.qwen,
            "/compatible-mode/v1/chat/completions",
            "qwen-plus",
        ),
    ] {
        let body = json!({"model": model, "messages": msgs, "max_tokens": 12});
        let surface = Surface::classify(dialect, path);
        let est = estimate(surface, model, body.to_string().as_bytes(), false);
        let c = Call {
            dialect,
            addr,
            path,
            model,
            body: body.clone(),
            sse_header: false,
        };
        let (p, _) = check(c, Some(with(body.clone(), stream.clone())), 1).await;
        assert_eq!(est.prompt_tokens, p, "{path} {model}");
        // The caller asked for usage itself: nothing injected, nothing stripped.
        let asked = with(
            body,
            json!({"stream": true, "stream_options": {"include_usage": true}}),
        );
        assert!(with_include_usage(asked.to_string().as_bytes()).is_none());
        let c = Call {
            dialect,
            addr,
            path,
            model,
            body: asked,
            sse_header: false,
        };
        check(c, None, 3).await;
    }
    let oa = |path, model, body: Value| Call {
        dialect: Dialect::Openai,
        addr: s.openai,
        path,
        model,
        body,
        sse_header: false,
    };
    let legacy = json!({"model": "gpt-3.5-turbo-instruct", "prompt": "Say hi", "max_tokens": 7});
    check(
        oa("/v1/completions", "gpt-3.5-turbo-instruct", legacy.clone()),
        Some(with(legacy, stream.clone())),
        5,
    )
    .await;
    let resp = json!({"model": "gpt-4o", "instructions": "Be brief.", "input": "Hello there", "max_output_tokens": 20});
    let (p, _) = check(
        oa("/v1/responses", "gpt-4o", resp.clone()),
        Some(with(resp.clone(), stream.clone())),
        7,
    )
    .await;
    let est = estimate(
        Surface::classify(Dialect::Openai, "/v1/responses"),
        "gpt-4o",
        resp.to_string().as_bytes(),
        false,
    );
    assert_eq!(est.prompt_tokens, p);
    let emb = json!({"model": "text-embedding-3-small", "input": ["hello world", "foxes"]});
    let (p, _) = check(
        oa("/v1/embeddings", "text-embedding-3-small", emb.clone()),
        None,
        9,
    )
    .await;
    assert_eq!(
        estimate(
            Surface::Embeddings(leaky_usage::Vendor::OpenAi),
            "text-embedding-3-small",
            emb.to_string().as_bytes(),
            false
        )
        .prompt_tokens,
        p
    );

    // Gemini native.
    let g = json!({"contents": [{"role": "user", "parts": [{"text": "Tell me something about foxes."}]}],
                   "systemInstruction": {"parts": [{"text": "Be terse."}]},
                   "generationConfig": {"maxOutputTokens": 12}});
    let gm = |path, body| Call {
        dialect: Dialect::Google,
        addr: s.gemini,
        path,
        model: "gemini-2.5-flash",
        body,
        sse_header: false,
    };
    let (p, c) = check(
        gm("/v1beta/models/gemini-2.5-flash:generateContent", g.clone()),
        None,
        11,
    )
    .await;
    let est = estimate(
        Surface::GeminiGenerate,
        "gemini-2.5-flash",
        g.to_string().as_bytes(),
        false,
    );
    assert_eq!(est.prompt_tokens, p);
    for path in [
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
    ] {
        assert_eq!(check(gm(path, g.clone()), None, 13).await, (p, c), "{path}");
    }
    let ge = json!({"content": {"parts": [{"text": "hello "}, {"text": "world"}]}});
    let call = Call {
        model: "text-embedding-004",
        ..gm("/v1beta/models/text-embedding-004:embedContent", ge.clone())
    };
    let a = send(&call, ge.to_string().as_bytes()).await;
    let est = estimate(
        Surface::GeminiEmbed,
        "text-embedding-004",
        ge.to_string().as_bytes(),
        false,
    );
    let (_, u) = track(
        UsageTracker::new(Surface::GeminiEmbed, "text-embedding-004", false, false),
        &a.raw,
        15,
        est.prompt_tokens,
    );
    assert_eq!(
        u,
        Usage {
            prompt_tokens: leaky_stubs::tokens::text("hello world"),
            completion_tokens: 0,
            reported: false
        }
    );

    // DashScope native: plain JSON, then SSE cumulative and incremental.
    let d = json!({"model": "qwen-plus", "input": {"messages": msgs}, "parameters": {"max_tokens": 12, "result_format": "message"}});
    let ds = |body, sse_header| Call {
        dialect: Dialect::Dashscope,
        addr: s.qwen,
        path: "/api/v1/services/aigc/text-generation/generation",
        model: "qwen-plus",
        body,
        sse_header,
    };
    let reference = check(ds(d.clone(), false), None, 17).await;
    let est = estimate(
        Surface::DashScopeGeneration,
        "qwen-plus",
        d.to_string().as_bytes(),
        false,
    );
    assert_eq!(est.prompt_tokens, reference.0);
    assert_eq!(check(ds(d.clone(), true), None, 19).await, reference);
    let inc = json!({"model": "qwen-plus", "input": {"messages": msgs}, "parameters": {"max_tokens": 12, "incremental_output": true}});
    assert_eq!(check(ds(inc, true), None, 21).await, reference);
    let text = json!({"model": "qwen-plus", "input": {"prompt": "Tell me something about foxes."}, "parameters": {"max_tokens": 12}});
    let (p, _) = check(ds(text.clone(), true), None, 23).await;
    assert_eq!(
        estimate(
            Surface::DashScopeGeneration,
            "qwen-plus",
            text.to_string().as_bytes(),
            true
        )
        .prompt_tokens,
        p
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_cut_after_the_last_delta_count_what_the_stub_reports() {
    let s = stubs().await;
    let msgs = json!([{"role": "user", "content": "Tell me something about foxes."}]);
    for (dialect, addr, path, model, marker) in [
        (
            Dialect::Openai,
            s.openai,
            "/v1/chat/completions",
            "gpt-4o-mini",
            "\"finish_reason\":\"",
        ),
        (
            Dialect::Google,
            s.gemini,
            "/v1beta/openai/chat/completions",
            "gemini-2.5-flash",
            "\"finish_reason\":\"",
        ),
        (
            Dialect::Openai,
            s.openai,
            "/v1/responses",
            "gpt-4o-mini",
            "event: response.output_text.done",
        ),
    ] {
        let body = if path.ends_with("responses") {
            json!({"model": model, "input": "Tell me something about foxes.", "max_output_tokens": 12, "stream": true})
        } else {
            json!({"model": model, "messages": msgs, "max_tokens": 12, "stream": true, "stream_options": {"include_usage": true}})
        };
        let c = Call {
            dialect,
            addr,
            path,
            model,
            body: body.clone(),
            sse_header: false,
        };
        let a = send(&c, body.to_string().as_bytes()).await;
        let surface = Surface::classify(dialect, path);
        let (_, full) = track(
            UsageTracker::new(surface, model, true, false),
            &a.raw,
            31,
            0,
        );
        assert!(full.reported);
        let raw = String::from_utf8(a.raw).unwrap();
        let cut = raw.find(marker).unwrap();
        let cut = if marker.starts_with("event:") {
            cut
        } else {
            raw[..cut].rfind("data:").unwrap()
        };
        let (_, u) = track(
            UsageTracker::new(surface, model, true, false),
            &raw.as_bytes()[..cut],
            33,
            1,
        );
        assert_eq!(
            u,
            Usage {
                prompt_tokens: 1,
                completion_tokens: full.completion_tokens,
                reported: false
            },
            "{path}"
        );
    }
}
