//! The usage read from the end of a whole answer against serde's read of the whole answer: on
//! every valid document serde reads, what the end-first read finds must be what serde finds (it
//! may find nothing and leave the answer to serde). Real answers and thousands of mutations.

use super::fast::fuzz;
use crate::extract::RawUsage;
use crate::member::last_usage;
use serde::Deserialize;

/// Whole answers: chat completions (the stubs' and OpenAI's members), legacy completions,
/// DashScope's native shape, usage first, nested usage objects, strings that mention the key.
const SAMPLES: &[&str] = &[
    r#"{"id":"chatcmpl-1","object":"chat.completion","created":1796071824,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"A leaky bucket drains at a fixed rate.","refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":9,"total_tokens":21,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}},"service_tier":"default","system_fingerprint":"fp_stub0001"}"#,
    r#"{"id":"cmpl-1","object":"text_completion","choices":[{"text":"legacy \"usage\": {} text","index":0,"logprobs":null,"finish_reason":"length"}],"usage":{"prompt_tokens":3,"completion_tokens":16,"total_tokens":19}}"#,
    r#"{"output":{"choices":[{"finish_reason":"stop","message":{"role":"assistant","content":"你好"}}]},"usage":{"input_tokens":8,"output_tokens":2,"total_tokens":10},"request_id":"r-1"}"#,
    r#"{"usage":{"prompt_tokens":5,"completion_tokens":3},"choices":[{"message":{"content":"x","usage":{"prompt_tokens":99}}}],"meta":{"usage":{"completion_tokens":77}}}"#,
    r#" { "choices" : [ ] , "usage" : { "total_tokens" : 40 } , "note" : "C:\\" } "#,
    r#"{"choices":[{"message":{"content":"no usage here"}}],"usage":null}"#,
    r#"{"a\"usage":{"prompt_tokens":1},"usage":{"prompt_tokens":2,"completion_tokens":2},"tags":["usage",{"usage":[1]}]}"#,
];

/// Members a mutation inserts (besides `fast`'s JSON pieces).
const PIECES: &[&[u8]] = &[
    b"\"usage\":",
    b"\"usage\":{\"prompt_tokens\":4},",
    b"\"usage\":null,",
    b"{\"usage\":{\"completion_tokens\":6}}",
    b"\"prompt_tokens\":",
    b"\"k\":\"v\",",
];

#[derive(Deserialize)]
struct UsageOnly {
    #[serde(default)]
    usage: Option<RawUsage>,
}

/// Panics when the end-first read finds a usage serde's whole read does not; says whether it
/// found one.
fn check(doc: &[u8]) -> bool {
    let fast = last_usage(doc, b"\"usage\"").and_then(|u| u.pair());
    if let (Some(_), Ok(whole)) = (fast, serde_json::from_slice::<UsageOnly>(doc)) {
        let slow = whole.usage.and_then(|u| u.pair());
        assert_eq!(fast, slow, "on {:?}", String::from_utf8_lossy(doc));
    }
    fast.is_some()
}

#[test]
fn the_real_answers_are_read_from_the_end_as_serde_reads_them() {
    let taken: Vec<bool> = SAMPLES.iter().map(|s| check(s.as_bytes())).collect();
    // Nested usage objects after the outermost one are passed over; a usage of null is left to
    // serde.
    assert_eq!(taken, [true, true, true, true, true, false, true]);
}

#[test]
fn mutated_answers_read_from_the_end_always_read_as_serde_reads_them() {
    fuzz(0x243F_6A88_85A3_08D3, 40_000, SAMPLES, PIECES, check);
}

/// `RawUsage::field` names the members serde reads into each count.
#[test]
fn every_count_is_named_as_serde_names_it() {
    let names = [
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "input_tokens",
        "output_tokens",
        "promptTokenCount",
        "candidatesTokenCount",
        "thoughtsTokenCount",
        "toolUsePromptTokenCount",
        "totalTokenCount",
    ];
    for (i, name) in names.iter().enumerate() {
        let by_serde: RawUsage = serde_json::from_str(&format!("{{\"{name}\":7}}")).unwrap();
        let field = RawUsage::field(name.as_bytes());
        assert_eq!(field, Some(i), "{name}");
        let mut put = RawUsage::default();
        put.put(i, Some(7));
        assert_eq!(format!("{put:?}"), format!("{by_serde:?}"), "{name}");
    }
    assert_eq!(RawUsage::field(b"prompt_tokens_details"), None);
}
