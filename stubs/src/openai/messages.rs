//! Validation of chat request parameters: `messages`, `tools` /
//! `tool_choice` and `response_format`.

use serde_json::{json, Map, Value};

use crate::common::{ApiError, Format};
use crate::gen::Rng;

const ROLES: [&str; 6] = [
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
];

pub(super) fn validate_messages(o: &Map<String, Value>) -> Result<&Vec<Value>, ApiError> {
    let messages = match o.get("messages") {
        None | Some(Value::Null) => return Err(ApiError::missing("messages")),
        Some(Value::Array(a)) => a,
        Some(v) => return Err(ApiError::invalid_type("messages", "an array", v)),
    };
    if messages.is_empty() {
        let mut e = ApiError::bad_request(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
        );
        e.param = Some("messages".into());
        e.code = Some("empty_array");
        return Err(e);
    }
    for (i, m) in messages.iter().enumerate() {
        let Value::Object(mo) = m else {
            return Err(ApiError::invalid_type(
                &format!("messages[{i}]"),
                "an object",
                m,
            ));
        };
        let role = match mo.get("role") {
            None | Some(Value::Null) => {
                return Err(ApiError::missing(&format!("messages[{i}].role")))
            }
            Some(Value::String(r)) => r.as_str(),
            Some(v) => {
                return Err(ApiError::invalid_type(
                    &format!("messages[{i}].role"),
                    "a string",
                    v,
                ))
            }
        };
        if !ROLES.contains(&role) {
            return Err(ApiError::invalid_value(
                &format!("messages[{i}].role"),
                format!("Invalid value: '{role}'. Supported values are: 'system', 'assistant', 'user', 'function', 'tool', and 'developer'."),
            ));
        }
        match mo.get("content") {
            None | Some(Value::Null) => {
                if role != "assistant" {
                    return Err(ApiError::missing(&format!("messages[{i}].content")));
                }
            }
            Some(Value::String(_)) | Some(Value::Array(_)) => {}
            Some(v) => {
                return Err(ApiError::invalid_type(
                    &format!("messages[{i}].content"),
                    "one of a string or array of objects",
                    v,
                ))
            }
        }
    }
    Ok(messages)
}

/// Chooses the tool to call, if any.
pub(super) fn pick_tool<'a>(
    tools: Option<&'a Vec<Value>>,
    tool_choice: Option<&Value>,
    last_role: &str,
    rng: &mut Rng,
) -> Result<Option<&'a Value>, ApiError> {
    let tools = match tools {
        Some(t) if !t.is_empty() => t,
        _ => {
            if matches!(tool_choice, Some(v) if !v.is_null()) {
                return Err(ApiError::invalid_value(
                    "tool_choice",
                    "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.",
                ));
            }
            return Ok(None);
        }
    };
    for (i, t) in tools.iter().enumerate() {
        match t.get("function").and_then(|f| f.get("name")) {
            Some(Value::String(_)) => {}
            Some(v) => {
                return Err(ApiError::invalid_type(
                    &format!("tools[{i}].function.name"),
                    "a string",
                    v,
                ))
            }
            None => return Err(ApiError::missing(&format!("tools[{i}].function.name"))),
        }
    }
    let mut any = || tools.get((rng.next_u64() % tools.len() as u64) as usize);
    match tool_choice {
        None | Some(Value::Null) => Ok(if last_role == "tool" { None } else { any() }),
        Some(Value::String(s)) => match s.as_str() {
            "none" => Ok(None),
            "auto" => Ok(if last_role == "tool" { None } else { any() }),
            "required" => Ok(any()),
            other => Err(ApiError::invalid_value(
                "tool_choice",
                format!("Invalid value: '{other}'. Supported values are: 'none', 'auto', and 'required'."),
            )),
        },
        Some(obj @ Value::Object(_)) => {
            let name = obj
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::missing("tool_choice.function.name"))?;
            tools
                .iter()
                .find(|t| t.get("function").and_then(|f| f.get("name")).and_then(Value::as_str) == Some(name))
                .map(Some)
                .ok_or_else(|| {
                    ApiError::invalid_value(
                        "tool_choice",
                        format!("Invalid value for 'tool_choice': no function named '{name}' was specified in the 'tools' parameter."),
                    )
                })
        }
        Some(v) => Err(ApiError::invalid_type("tool_choice", "a string or object", v)),
    }
}

pub(super) fn response_format(o: &Map<String, Value>) -> Result<Format, ApiError> {
    match o.get("response_format") {
        None | Some(Value::Null) => Ok(Format::Text),
        Some(Value::Object(rf)) => match rf.get("type").and_then(Value::as_str) {
            Some("text") => Ok(Format::Text),
            Some("json_object") => Ok(Format::JsonObject),
            Some("json_schema") => {
                let schema = rf
                    .get("json_schema")
                    .and_then(|j| j.get("schema"))
                    .cloned()
                    .unwrap_or_else(|| json!({"type": "object"}));
                Ok(Format::JsonSchema(schema))
            }
            Some(other) => Err(ApiError::invalid_value(
                "response_format.type",
                format!("Invalid value: '{other}'. Supported values are: 'json_object', 'json_schema', and 'text'."),
            )),
            None => Err(ApiError::missing("response_format.type")),
        },
        Some(v) => Err(ApiError::invalid_type("response_format", "an object", v)),
    }
}
