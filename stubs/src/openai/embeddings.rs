//! `embeddings`: deterministic vectors and input token counts.

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};

use super::{auth_headers, check_model, Flavor};
use crate::common::{json_response, opt_u64, parse_object, ApiError, SharedCtx};
use crate::gen::{self, Hasher};
use crate::tokens::Tokenizer;

/// Converts an f32 to the f64 with the same shortest decimal representation,
/// so JSON shows `0.0123` rather than `0.012299999594688416`.
pub fn f32_json(x: f32) -> Value {
    let s = x.to_string();
    s.parse::<f64>()
        .map(Value::from)
        .unwrap_or(Value::from(f64::from(x)))
}

/// `(hash, tokens)` of each embedding input.
fn embedding_inputs(v: Option<&Value>, tk: Tokenizer) -> Result<Vec<(u64, u64)>, ApiError> {
    let empty = || {
        ApiError::invalid_value(
            "input",
            "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.",
        )
    };
    match v {
        None | Some(Value::Null) => Err(ApiError::missing("input")),
        Some(Value::String(s)) => {
            if s.is_empty() {
                return Err(empty());
            }
            Ok(vec![(Hasher::default().str(s).finish(), tk.text(s))])
        }
        Some(Value::Array(a)) if a.is_empty() => Err(empty()),
        Some(Value::Array(a)) if a.iter().all(Value::is_u64) => Ok(vec![(
            Hasher::default().value(&Value::Array(a.clone())).finish(),
            a.len() as u64,
        )]),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| match x {
                Value::String(s) if !s.is_empty() => {
                    Ok((Hasher::default().str(s).finish(), tk.text(s)))
                }
                Value::Array(t) if !t.is_empty() && t.iter().all(Value::is_u64) => {
                    Ok((Hasher::default().value(x).finish(), t.len() as u64))
                }
                _ => Err(empty()),
            })
            .collect(),
        Some(v) => Err(ApiError::invalid_type("input", "a string or array", v)),
    }
}

pub(super) fn embeddings(
    ctx: &SharedCtx,
    fl: &Flavor,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ApiError> {
    auth_headers(fl, headers)?;
    let o = parse_object(body)?;
    let model = check_model(fl, &o)?;
    let Some(full_dim) = fl.embed_dim(model) else {
        return Err(ApiError::bad_request(format!(
            "The model `{model}` does not support embeddings."
        )));
    };
    let inputs = embedding_inputs(o.get("input"), fl.tokenizer(model))?;
    let dim = match opt_u64(&o, "dimensions")? {
        None => full_dim,
        Some(d) => {
            if !(fl.supports_dimensions)(model) {
                let mut e =
                    ApiError::bad_request("This model does not support specifying dimensions.");
                e.param = Some("dimensions".into());
                return Err(e);
            }
            if d == 0 || d as usize > full_dim {
                return Err(ApiError::invalid_value(
                    "dimensions",
                    format!("Invalid 'dimensions': expected a value between 1 and {full_dim}, but got {d} instead."),
                ));
            }
            d as usize
        }
    };
    let base64 = match o.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) if s == "float" => false,
        Some(Value::String(s)) if s == "base64" => true,
        Some(Value::String(s)) => {
            return Err(ApiError::invalid_value(
                "encoding_format",
                format!("Invalid value: '{s}'. Supported values are: 'float' and 'base64'."),
            ))
        }
        Some(v) => return Err(ApiError::invalid_type("encoding_format", "a string", v)),
    };
    let mut total = 0;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, (h, t))| {
            total += t;
            let mut v = gen::embedding(model, *h, full_dim);
            if dim < full_dim {
                v.truncate(dim);
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                if norm > 0.0 {
                    v.iter_mut().for_each(|x| *x /= norm);
                }
            }
            let emb = if base64 {
                Value::String(gen::f32_base64(&v))
            } else {
                Value::Array(v.iter().map(|x| f32_json(*x)).collect())
            };
            json!({"object": "embedding", "index": i, "embedding": emb})
        })
        .collect();
    ctx.metrics.tokens(total, 0);
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": total, "total_tokens": total},
        }),
    ))
}
