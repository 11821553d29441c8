//! The OpenAI model catalogue and the `models` / `models/{id}` endpoints.

use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use serde_json::{json, Value};

use super::{auth, Flavor, ModelInfo};
use crate::common::{json_response, ApiError, Dialect};

fn openai_family(m: &str) -> bool {
    ["gpt-", "o1", "o3", "o4", "text-embedding-", "chatgpt-"]
        .iter()
        .any(|p| m.starts_with(p))
}

fn openai_embed_default(m: &str) -> Option<usize> {
    m.starts_with("text-embedding-").then_some(1536)
}

fn openai_supports_dimensions(m: &str) -> bool {
    m.starts_with("text-embedding-3")
}

pub static OPENAI_MODELS: [ModelInfo; 10] = [
    ModelInfo {
        id: "gpt-4o",
        created: 1_715_367_049,
        embed_dim: None,
    },
    ModelInfo {
        id: "gpt-4o-mini",
        created: 1_721_172_741,
        embed_dim: None,
    },
    ModelInfo {
        id: "gpt-4.1",
        created: 1_744_316_542,
        embed_dim: None,
    },
    ModelInfo {
        id: "gpt-4.1-mini",
        created: 1_744_318_173,
        embed_dim: None,
    },
    ModelInfo {
        id: "o3-mini",
        created: 1_737_146_383,
        embed_dim: None,
    },
    ModelInfo {
        id: "o4-mini",
        created: 1_744_225_351,
        embed_dim: None,
    },
    ModelInfo {
        id: "gpt-3.5-turbo-instruct",
        created: 1_692_901_427,
        embed_dim: None,
    },
    ModelInfo {
        id: "text-embedding-3-small",
        created: 1_705_948_997,
        embed_dim: Some(1536),
    },
    ModelInfo {
        id: "text-embedding-3-large",
        created: 1_705_953_180,
        embed_dim: Some(3072),
    },
    ModelInfo {
        id: "text-embedding-ada-002",
        created: 1_671_217_299,
        embed_dim: Some(1536),
    },
];

pub static OPENAI: Flavor = Flavor {
    dialect: Dialect::OpenAi,
    family: openai_family,
    models: &OPENAI_MODELS,
    owned_by: "system",
    list_prefix: "",
    uuid_ids: false,
    fingerprint: true,
    rich_usage: true,
    goog_key: false,
    default_embed_dim: openai_embed_default,
    supports_dimensions: openai_supports_dimensions,
    bpe: true,
};

fn model_object(fl: &Flavor, id: &str, created: u64) -> Value {
    json!({
        "id": format!("{}{id}", fl.list_prefix),
        "object": "model",
        "created": created,
        "owned_by": fl.owned_by,
    })
}

pub(super) fn list_models(
    fl: &Flavor,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<Response, ApiError> {
    auth(fl, headers, uri)?;
    let data: Vec<Value> = fl
        .models
        .iter()
        .map(|m| model_object(fl, m.id, m.created))
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({"object": "list", "data": data}),
    ))
}

pub(super) fn get_model(
    fl: &Flavor,
    headers: &HeaderMap,
    uri: &Uri,
    id: &str,
) -> Result<Response, ApiError> {
    auth(fl, headers, uri)?;
    let id = fl.normalise(id.trim_start_matches('/'));
    if let Some(m) = fl.models.iter().find(|m| m.id == id) {
        return Ok(json_response(
            StatusCode::OK,
            &model_object(fl, m.id, m.created),
        ));
    }
    if (fl.family)(id) {
        return Ok(json_response(
            StatusCode::OK,
            &model_object(fl, id, 1_700_000_000),
        ));
    }
    Err(ApiError::model_not_found(id))
}
