//! OpenAI Responses API (`POST /v1/responses`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use leaky_stubs::tokens::Tokenizer;
use leaky_stubs::{openai_router, Latency};
use reqwest::Client;
use serde_json::{json, Value};

async fn serve() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(l, openai_router(Latency::Off)).await;
    });
    format!("http://{addr}/v1/responses")
}

#[tokio::test]
async fn responses_plain_and_streaming() {
    let url = serve().await;
    let c = Client::new();
    let body = json!({"model": "gpt-4o-mini", "instructions": "Be brief.", "input": "Tell me about foxes."});
    let r = c
        .post(&url)
        .bearer_auth("k")
        .header("x-stub-completion-tokens", "12")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "response");
    assert_eq!(v["status"], "completed");
    assert!(v["id"].as_str().unwrap().starts_with("resp_"));
    let item = &v["output"][0];
    assert_eq!(item["type"], "message");
    assert_eq!(item["role"], "assistant");
    assert_eq!(item["content"][0]["type"], "output_text");
    let text = item["content"][0]["text"].as_str().unwrap();
    let tk = Tokenizer::O200k;
    assert_eq!(tk.text(text), 12);
    let msgs = [
        json!({"role": "developer", "content": "Be brief."}),
        json!({"role": "user", "content": "Tell me about foxes."}),
    ];
    let u = &v["usage"];
    assert_eq!(u["input_tokens"], tk.chat(&msgs, None));
    assert_eq!(u["output_tokens"], 12);
    assert_eq!(
        u["total_tokens"].as_u64().unwrap(),
        tk.chat(&msgs, None) + 12
    );

    let mut sb = body.clone();
    sb["stream"] = json!(true);
    let text_s = c
        .post(&url)
        .bearer_auth("k")
        .header("x-stub-completion-tokens", "12")
        .json(&sb)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let events: Vec<(String, Value)> = text_s
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let (ev, data) = e.split_once('\n').unwrap();
            let name = ev.strip_prefix("event: ").unwrap().to_string();
            let v: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(v["type"], name.as_str());
            (name, v)
        })
        .collect();
    assert_eq!(events[0].0, "response.created");
    assert_eq!(events.last().unwrap().0, "response.completed");
    let deltas: String = events
        .iter()
        .filter(|(n, _)| n == "response.output_text.delta")
        .map(|(_, v)| v["delta"].as_str().unwrap())
        .collect();
    assert_eq!(deltas, text);
    let done = &events.last().unwrap().1["response"];
    assert_eq!(done["usage"], v["usage"]);
    for (i, (_, e)) in events.iter().enumerate() {
        assert_eq!(e["sequence_number"], i);
    }

    // A cap gives an incomplete response.
    let mut capped = body.clone();
    capped["max_output_tokens"] = json!(5);
    let v: Value = c
        .post(&url)
        .bearer_auth("k")
        .json(&capped)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["status"], "incomplete");
    assert_eq!(v["incomplete_details"]["reason"], "max_output_tokens");
    assert_eq!(v["usage"]["output_tokens"], 5);
    // Missing input.
    let r = c
        .post(&url)
        .bearer_auth("k")
        .json(&json!({"model": "gpt-4o"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}
