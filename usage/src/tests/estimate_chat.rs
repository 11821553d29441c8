//! The chat estimate's borrowed read against the general one (a parsed `Value`): whatever the
//! borrowed read estimates must equal the general estimate, on real request shapes and on thousands
//! of mutations of them, for each vendor's counting (two BPE encodings and the approximation);
//! tools and tool calls it must leave to the general path.

use super::fast::fuzz;
use crate::estimate_chat;
use crate::{estimate_parsed, peek_model, ChatRead, ParsedBody, Surface};
use leaky_tokenize::Vendor;

const SAMPLES: &[&str] = &[
    r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello in one short sentence."}],"max_tokens":16}"#,
    r#"{"model":"gpt-4o","messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"line one\nline \"two\" \u00e9\ud83d\ude00","name":"bob"}],"stream":true,"stream_options":{"include_usage":true},"n":3,"max_completion_tokens":100}"#,
    r#"{"messages":[{"role":"user","content":[{"type":"text","text":"héllo wörld — 你好"},{"type":"image_url","image_url":{"url":"data:,"}},"plain",7,null,[1]]}],"temperature":0.2,"top_p":1e-3}"#,
    r#" { "messages" : [ { "role" : "assistant" , "content" : null } , { "role" : "user" , "content" : "x" } ] , "stream" : false , "max_tokens" : -5 , "n" : 0 } "#,
    r#"{"messages":[{"role":"user","content":"a"}],"tools":[{"type":"function","function":{"name":"f","parameters":{}}}]}"#,
    r#"{"messages":[{"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{}"}}]}]}"#,
    r#"{"messages":"not a list","max_tokens":16.0,"stream_options":[true],"stream":"yes"}"#,
    r#"{"messages":[{"role":"user","content":"first"},"odd",{"content":{"text":"obj"}},{"role":5,"name":null,"content":"z"}],"n":2}"#,
    r#"{"messages":[{"role":"user","content":"a","content":"bb","role":"system"}],"messages":[{"role":"user","content":"last wins"}],"max_tokens":1,"max_tokens":2}"#,
    r#"{"m\u0065ssages":[{"role":"user","c\u006fntent":"escaped names","n\u0061me":"x"}],"tools":null,"max_completion_tokens":18446744073709551615}"#,
    r#"{"messages":[{"role":"user","content":[{"text":"a","text":5},{"text":"b"}]}],"stream_options":{"include_usage":false,"include_usage":true}}"#,
    r#"{"messages":[],"x":[1,-2.5e+3,true,false,null,{"y":[[],{}]}],"z":"\/\b\f\r\t"}"#,
    r#"[{"messages":[]}]"#,
    r#"{}"#,
];

/// Members of chat requests a mutation inserts (besides `fast`'s JSON pieces).
const PIECES: &[&[u8]] = &[
    b"\"n\":4,",
    b"\"max_tokens\":9,",
    b"\"stream\":true,",
    b"\"content\":\"dup\",",
    b"\"name\":\"nm\",",
    b"\"role\":\"tool\",",
    b"\"text\":\"t\",",
    b"\"tools\":[],",
    b"\"tool_calls\":null,",
    b"\"messages\":[],",
    b"{\"role\":\"user\",\"content\":\"more\"},",
];

const VENDORS: &[(Vendor, &str)] = &[
    (Vendor::OpenAi, "gpt-4o-mini"),
    (Vendor::OpenAi, "gpt-4"),
    (Vendor::Google, "gemini-2.0-flash"),
    (Vendor::DashScope, "qwen-plus"),
];

/// Whether the borrowed read took `body` (for every vendor); panics where it differs.
fn check(body: &[u8]) -> bool {
    let mut taken = None;
    for &(vendor, model) in VENDORS {
        let general = estimate_parsed(
            Surface::ChatCompletions(vendor),
            model,
            &ParsedBody::parse(body),
            false,
        );
        let fast = estimate_chat::estimate(vendor, model, body);
        if let Some(fast) = fast {
            assert_eq!(
                fast,
                general,
                "{vendor:?} {model}: the borrowed read differs on {:?}",
                String::from_utf8_lossy(body)
            );
        }
        assert!(taken.is_none_or(|t| t == fast.is_some()), "taken by vendor");
        taken = Some(fast.is_some());
    }
    taken.unwrap_or(false)
}

#[test]
fn plain_chat_requests_are_estimated_as_the_general_path_does() {
    let taken: Vec<bool> = SAMPLES.iter().map(|s| check(s.as_bytes())).collect();
    // Tools and tool calls (5th, 6th) and a body that is not an object (13th) go the general way.
    assert_eq!(
        taken,
        [true, true, true, true, false, false, true, true, true, true, true, true, false, true]
    );
}

#[test]
fn mutated_requests_estimated_by_the_borrowed_read_match_the_general_path() {
    fuzz(0x2545_F491_4F6C_DD1D, 20_000, SAMPLES, PIECES, check);
}

#[test]
fn json_the_general_parse_refuses_is_refused() {
    // An out-of-range number, invalid UTF-8 and a lone surrogate in members the estimate does not
    // read: the general parse refuses the body (it is counted as bytes), so must the borrowed read.
    for body in [
        &br#"{"messages":[],"temperature":1e400}"#[..],
        b"{\"messages\":[],\"user\":\"\xff\"}",
        br#"{"messages":[],"user":"\ud800"}"#,
    ] {
        assert!(
            serde_json::from_slice::<serde_json::Value>(body).is_err(),
            "{body:?}"
        );
        assert!(estimate_chat::estimate(Vendor::OpenAi, "gpt-4o", body).is_none());
    }
}

/// Bodies whose `model` the routing step reads: strings (escaped too), `null`, absent, repeated,
/// of other types, nested where it is not the request's.
const MODEL_SAMPLES: &[&str] = &[
    r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"max_tokens":16}"#,
    r#"{"messages":[{"role":"user","content":"hi","model":"inner"}],"model":"g\u0070t-4o"}"#,
    r#"{"model":null,"messages":[]}"#,
    r#"{"messages":[],"stream":true}"#,
    r#"{"model":"a","messages":[],"model":"b"}"#,
    r#"{"model":5,"messages":[]}"#,
    r#"{"model":["gpt-4o"],"messages":[]}"#,
    r#"{"model":{"id":"gpt-4o"},"messages":[]}"#,
    r#"{"metadata":{"model":"x"},"model":"qwen-plus","messages":[{"role":"user","content":[{"type":"text","text":"t"}]}]}"#,
    r#"["gpt-4o",[]]"#,
];

/// Members a mutation inserts to move, repeat or retype `model`.
const MODEL_PIECES: &[&[u8]] = &[
    b"\"model\":\"m2\",",
    b"\"model\":null,",
    b"\"model\":7,",
    b"\"model\":\"e\\u0073c\",",
    b"\"mod\\u0065l\":\"k\",",
    b"\"messages\":[],",
    b"\"tools\":[],",
];

/// Whether [`ChatRead`] took `body`; where it did, the model peek must take it too and read the
/// same `model` (panics where not).
fn check_model(body: &[u8]) -> bool {
    let Some(read) = ChatRead::parse(body) else {
        return false;
    };
    let text = || String::from_utf8_lossy(body).into_owned();
    let peek = peek_model(body);
    assert!(
        peek.is_ok(),
        "the peek refuses ({:?}) what the chat read took: {:?}",
        peek.as_ref().err(),
        text()
    );
    let peek = peek.ok().flatten();
    assert_eq!(
        read.model(),
        peek.as_deref(),
        "the model differs on {:?}",
        text()
    );
    true
}

#[test]
fn the_chat_read_gives_the_model_peeks_model() {
    let taken: Vec<bool> = MODEL_SAMPLES
        .iter()
        .map(|s| check_model(s.as_bytes()))
        .collect();
    // A repeated model (5th), one of another type (6th to 8th) and an array body (10th) are left
    // to the peek, which refuses them.
    assert_eq!(
        taken,
        [true, true, true, true, false, false, false, false, true, false]
    );
    for (s, took) in MODEL_SAMPLES.iter().zip(&taken) {
        if !took && !s.starts_with('[') {
            assert!(peek_model(s.as_bytes()).is_err(), "{s}");
        }
    }
}

#[test]
fn mutated_requests_read_once_give_the_model_peeks_model() {
    fuzz(
        0x5851_F42D_4C95_7F2D,
        20_000,
        MODEL_SAMPLES,
        MODEL_PIECES,
        check_model,
    );
}
