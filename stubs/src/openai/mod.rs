//! OpenAI API stub, plus the OpenAI-shaped endpoints reused by the Gemini
//! (`/v1beta/openai`) and DashScope (`/compatible-mode/v1`) compatibility
//! layers. Each use is described by a [`Flavor`].

mod chat;
mod completions;
mod embeddings;
mod messages;
mod models;
mod responses;

pub use embeddings::f32_json;
pub use models::{OPENAI, OPENAI_MODELS};

use chat::chat;
use completions::legacy_completions;
use embeddings::embeddings;
use models::{get_model, list_models};
use responses::responses;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, Uri};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{Map, Value};

use crate::common::{
    self, bearer, check_key, opt_bool, req_str, ApiError, Dialect, Finish, SharedCtx,
};
use crate::tokens::Tokenizer;
use crate::{Latency, StubOptions};

/// A model advertised by a stub's model listing.
pub struct ModelInfo {
    pub id: &'static str,
    pub created: u64,
    /// Embedding dimension for embedding models.
    pub embed_dim: Option<usize>,
}

/// How an OpenAI-shaped surface behaves for one provider.
pub struct Flavor {
    pub dialect: Dialect,
    pub family: fn(&str) -> bool,
    pub models: &'static [ModelInfo],
    pub owned_by: &'static str,
    /// Prefix of ids in the model listing (`models/` for Gemini).
    pub list_prefix: &'static str,
    /// Completion ids are `chatcmpl-<uuid>` instead of `chatcmpl-<29 alnum>`.
    pub uuid_ids: bool,
    pub fingerprint: bool,
    /// Include `prompt_tokens_details` / `completion_tokens_details`.
    pub rich_usage: bool,
    /// Also accept `x-goog-api-key` / `?key=`.
    pub goog_key: bool,
    /// Embedding dimension for a family model that is not in `models`.
    pub default_embed_dim: fn(&str) -> Option<usize>,
    /// Whether the `dimensions` parameter is supported by a model.
    pub supports_dimensions: fn(&str) -> bool,
    /// Count with the model's real BPE encoding instead of the approximation.
    pub bpe: bool,
}

impl Flavor {
    /// How this surface counts tokens for `model`.
    pub fn tokenizer(&self, model: &str) -> Tokenizer {
        if self.bpe {
            Tokenizer::for_openai_model(model)
        } else {
            Tokenizer::Approx
        }
    }

    pub fn normalise<'a>(&self, model: &'a str) -> &'a str {
        model.strip_prefix("models/").unwrap_or(model)
    }

    pub fn accepts(&self, model: &str) -> bool {
        self.models.iter().any(|m| m.id == model) || (self.family)(model)
    }

    fn embed_dim(&self, model: &str) -> Option<usize> {
        match self.models.iter().find(|m| m.id == model) {
            Some(m) => m.embed_dim,
            None => (self.default_embed_dim)(model),
        }
    }
}

/// The OpenAI router.
pub fn router(latency: Latency) -> Router {
    router_with(&StubOptions::new(latency))
}

/// The router with faults, limits and a clock.
pub fn router_with(opts: &StubOptions) -> Router {
    let ctx = common::Ctx::new("openai", Dialect::OpenAi, opts);
    let api = compat_routes(&OPENAI, "/v1").route(
        "/v1/completions",
        post(
            |State(ctx): State<SharedCtx>, headers: HeaderMap, body: Bytes| async move {
                match legacy_completions(&ctx, &headers, &body).await {
                    Ok(r) => r,
                    Err(e) => e.render(Dialect::OpenAi),
                }
            },
        ),
    );
    let api = api.route(
        "/v1/responses",
        post(
            |State(ctx): State<SharedCtx>, headers: HeaderMap, body: Bytes| async move {
                match responses(&ctx, &headers, &body).await {
                    Ok(r) => r,
                    Err(e) => e.render(Dialect::OpenAi),
                }
            },
        ),
    );
    finish_router(api, ctx)
}

/// Adds health, metrics, fallback and the observing middleware.
pub fn finish_router(api: Router<SharedCtx>, ctx: SharedCtx) -> Router {
    let dialect = ctx.dialect;
    api.route("/healthz", get(common::healthz))
        .route("/metrics", get(common::metrics))
        .fallback(move |method: Method, uri: Uri| async move {
            let mut resp = ApiError::route_not_found(method.as_str(), uri.path()).render(dialect);
            resp.extensions_mut().insert(common::Unmatched);
            resp
        })
        .layer(axum::middleware::from_fn_with_state(
            ctx.clone(),
            crate::control::control,
        ))
        .layer(axum::middleware::from_fn_with_state(
            ctx.clone(),
            common::observe,
        ))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(ctx)
}

/// `chat/completions`, `embeddings`, `models` and `models/{id}` under `prefix`.
pub fn compat_routes(fl: &'static Flavor, prefix: &str) -> Router<SharedCtx> {
    Router::new()
        .route(
            &format!("{prefix}/chat/completions"),
            post(
                move |State(ctx): State<SharedCtx>, headers: HeaderMap, body: Bytes| async move {
                    match chat(&ctx, fl, &headers, &body).await {
                        Ok(r) => r,
                        Err(e) => e.render(fl.dialect),
                    }
                },
            ),
        )
        .route(
            &format!("{prefix}/embeddings"),
            post(
                move |State(ctx): State<SharedCtx>, headers: HeaderMap, body: Bytes| async move {
                    match embeddings(&ctx, fl, &headers, &body) {
                        Ok(r) => r,
                        Err(e) => e.render(fl.dialect),
                    }
                },
            ),
        )
        .route(
            &format!("{prefix}/models"),
            get(move |headers: HeaderMap, uri: Uri| async move {
                match list_models(fl, &headers, &uri) {
                    Ok(r) => r,
                    Err(e) => e.render(fl.dialect),
                }
            }),
        )
        .route(
            &format!("{prefix}/models/{{*id}}"),
            get(
                move |headers: HeaderMap, uri: Uri, Path(id): Path<String>| async move {
                    match get_model(fl, &headers, &uri, &id) {
                        Ok(r) => r,
                        Err(e) => e.render(fl.dialect),
                    }
                },
            ),
        )
}

fn auth(fl: &Flavor, headers: &HeaderMap, uri: &Uri) -> Result<(), ApiError> {
    let mut key = bearer(headers).map(str::to_string);
    if key.is_none() && fl.goog_key {
        key = headers
            .get("x-goog-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| common::query_param(uri.query(), "key"));
    }
    check_key(key.as_deref())
}

fn auth_headers(fl: &Flavor, headers: &HeaderMap) -> Result<(), ApiError> {
    let mut key = bearer(headers);
    if key.is_none() && fl.goog_key {
        key = headers.get("x-goog-api-key").and_then(|v| v.to_str().ok());
    }
    check_key(key)
}

fn finish_str(f: Finish) -> &'static str {
    match f {
        Finish::Stop => "stop",
        Finish::Length => "length",
    }
}

fn stream_flags(o: &Map<String, Value>) -> Result<(bool, bool), ApiError> {
    let stream = opt_bool(o, "stream")?.unwrap_or(false);
    let include_usage = match o.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(so)) => {
            if !stream {
                let mut e = ApiError::bad_request(
                    "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                );
                e.param = Some("stream_options".into());
                return Err(e);
            }
            opt_bool(so, "include_usage")?.unwrap_or(false)
        }
        Some(v) => return Err(ApiError::invalid_type("stream_options", "an object", v)),
    };
    Ok((stream, include_usage))
}

fn check_model<'a>(fl: &Flavor, o: &'a Map<String, Value>) -> Result<&'a str, ApiError> {
    let model = fl.normalise(req_str(o, "model")?);
    if !fl.accepts(model) {
        return Err(ApiError::model_not_found(model));
    }
    Ok(model)
}
