//! The `ceil(chars / 4)` approximation and the chat / Gemini prompt overheads.

use serde_json::Value;

/// Tokens charged for a non-text content part (image, audio, file...).
pub const NON_TEXT_PART: u64 = 85;
/// Per-message overhead for chat formats.
pub const PER_MESSAGE: u64 = 3;
/// Overhead for priming the assistant reply in chat formats.
pub const REPLY_PRIMING: u64 = 3;
/// Extra overhead for a message carrying a `name`.
pub const PER_NAME: u64 = 1;

/// `ceil(chars / 4)`; the empty string costs 0.
pub fn text(s: &str) -> u64 {
    let chars = s.chars().count() as u64;
    chars.div_ceil(4)
}

/// Tokens of an OpenAI-style message `content` (string, array of parts, or null).
pub fn content(v: &Value) -> u64 {
    match v {
        Value::String(s) => text(s),
        Value::Array(parts) => parts
            .iter()
            .map(|p| match p {
                Value::String(s) => text(s),
                Value::Object(o) => match o.get("text") {
                    Some(Value::String(s)) => text(s),
                    _ => NON_TEXT_PART,
                },
                _ => 0,
            })
            .sum(),
        _ => 0,
    }
}

/// Tokens of one chat message (including the per-message overhead).
pub fn chat_message(m: &Value) -> u64 {
    let mut n = PER_MESSAGE;
    if let Some(c) = m.get("content") {
        n += content(c);
    }
    if let Some(Value::String(name)) = m.get("name") {
        n += PER_NAME + text(name);
    }
    if let Some(Value::Array(calls)) = m.get("tool_calls") {
        for call in calls {
            if let Some(f) = call.get("function") {
                if let Some(Value::String(s)) = f.get("name") {
                    n += text(s);
                }
                if let Some(Value::String(s)) = f.get("arguments") {
                    n += text(s);
                }
            }
        }
    }
    n
}

/// Prompt tokens of a chat request: messages, reply priming and tool definitions.
pub fn chat(messages: &[Value], tools: Option<&Value>) -> u64 {
    let mut n: u64 = messages.iter().map(chat_message).sum::<u64>() + REPLY_PRIMING;
    if let Some(t @ Value::Array(a)) = tools {
        if !a.is_empty() {
            n += text(&t.to_string());
        }
    }
    n
}

/// Tokens of a Gemini `Content` object (`{"role":..,"parts":[..]}`).
pub fn gemini_content(c: &Value) -> u64 {
    match c.get("parts") {
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|p| match p.get("text") {
                Some(Value::String(s)) => text(s),
                _ => {
                    if let Some(fc) = p.get("functionCall").or_else(|| p.get("functionResponse")) {
                        text(&fc.to_string())
                    } else {
                        NON_TEXT_PART
                    }
                }
            })
            .sum(),
        _ => 0,
    }
}

/// Prompt tokens of a Gemini request: all contents plus the system instruction.
pub fn gemini(contents: &[Value], system_instruction: Option<&Value>) -> u64 {
    contents.iter().map(gemini_content).sum::<u64>()
        + system_instruction.map(gemini_content).unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;
    #[test]
    fn text_is_ceil_chars_over_four() {
        assert_eq!(text(""), 0);
        assert_eq!(text("a"), 1);
        assert_eq!(text("abcd"), 1);
        assert_eq!(text("abcde"), 2);
        assert_eq!(text("Hello, world!"), 4);
        // counts chars, not bytes
        assert_eq!(text("éééé"), 1);
        assert_eq!(text("日本語です"), 2);
    }

    #[test]
    fn chat_counts_overheads() {
        let msgs = vec![
            json!({"role":"system","content":"You are terse."}), // 14 chars -> 4
            json!({"role":"user","content":"Hi"}),               // 1
        ];
        assert_eq!(chat(&msgs, None), (3 + 4) + (3 + 1) + 3);
    }

    #[test]
    fn chat_counts_names_parts_and_tool_calls() {
        let msgs = vec![
            json!({"role":"user","name":"bob","content":[{"type":"text","text":"abcdefgh"},{"type":"image_url","image_url":{"url":"x"}}]}),
            json!({"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function","function":{"name":"get","arguments":"{\"a\":1}"}}]}),
        ];
        let expected = (3 + 1 + 1 + 2 + NON_TEXT_PART) + (3 + 1 + 2) + 3;
        assert_eq!(chat(&msgs, None), expected);
    }

    #[test]
    fn tools_add_their_json_length() {
        let msgs = vec![json!({"role":"user","content":"x"})];
        let tools = json!([{"type":"function","function":{"name":"f"}}]);
        let base = chat(&msgs, None);
        assert_eq!(chat(&msgs, Some(&tools)), base + text(&tools.to_string()));
        assert_eq!(chat(&msgs, Some(&json!([]))), base);
    }

    #[test]
    fn gemini_has_no_overhead() {
        let contents = vec![
            json!({"role":"user","parts":[{"text":"abcd"},{"text":"abcde"}]}),
            json!({"role":"model","parts":[{"text":"ok"}]}),
        ];
        let sys = json!({"parts":[{"text":"be nice"}]});
        assert_eq!(gemini(&contents, None), 1 + 2 + 1);
        assert_eq!(gemini(&contents, Some(&sys)), 1 + 2 + 1 + 2);
        let img = vec![json!({"parts":[{"inlineData":{"mimeType":"image/png","data":"AA=="}}]})];
        assert_eq!(gemini(&img, None), NON_TEXT_PART);
    }
}
