//! The admin listener: `/healthz`, `/readyz`, `/metrics`, `GET /admin/config`, `POST /admin/reload`.
//!
//! Access rules (browser checks, `server.admin_token`) are `admin_auth`'s, applied before any endpoint.
//!
//! `/admin/config` shows what is serving (version, hash, files, routes, providers, key ids, feature
//! flags — every flag the gateway's code reads, with its built-in default when unconfigured) and the
//! outcome of the last reload, including every error of a failed one; fed by a control plane, also
//! the stream's state (`control_plane`: URL, connected, the control-plane version applied). It never
//! shows a secret: provider credentials appear as `set`/`unset`, keys by id only.

use crate::reload::ConfigState;
use crate::source::ConfigSource;
use async_trait::async_trait;
use http::{Response, StatusCode};
use leaky_config::{Config, RouteUpstream};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::{json, Value};
use std::sync::Arc;

pub struct Admin {
    pub state: Arc<ConfigState>,
    /// Where `POST /admin/reload` asks for the config again.
    pub source: Arc<dyn ConfigSource>,
}

fn reply(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    let len = r.body().len();
    r.headers_mut()
        .insert(http::header::CONTENT_LENGTH, len.into());
    r
}

fn json_reply(status: StatusCode, v: &Value) -> Response<Vec<u8>> {
    let mut body = serde_json::to_vec_pretty(v).unwrap_or_default();
    body.push(b'\n');
    reply(status, "application/json", body)
}

/// Through Pingora's `HttpServerApp` (the listener's default).
impl crate::listener::H1Serve for Admin {}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        let server = self.state.snapshot().config.server.clone();
        if let Err(refusal) = crate::admin_auth::check(
            &method,
            &path,
            &session.req_header().headers,
            server.admin_listen,
            server.admin_token.as_ref(),
        ) {
            tracing::warn!(%method, %path, reason = %refusal, "admin request refused");
            let mut r = json_reply(refusal.status(), &json!({"error": refusal.to_string()}));
            if refusal.status() == StatusCode::UNAUTHORIZED {
                r.headers_mut().insert(
                    http::header::WWW_AUTHENTICATE,
                    http::HeaderValue::from_static("Bearer realm=\"leaky-tokens admin\""),
                );
            }
            return r;
        }
        match (method.as_str(), path.as_str()) {
            ("GET", "/healthz") => reply(StatusCode::OK, "text/plain", b"ok\n".to_vec()),
            ("GET", "/readyz") => {
                let s = self.state.snapshot();
                json_reply(
                    StatusCode::OK,
                    &json!({"ready": true, "config_version": s.version}),
                )
            }
            ("GET", "/metrics") => {
                let snapshot = self.state.snapshot();
                crate::metrics::sync_store_stats(snapshot.backend.guard_stats());
                snapshot.caches.sync_metrics();
                reply(
                    StatusCode::OK,
                    "text/plain; version=0.0.4",
                    crate::metrics::render().into_bytes(),
                )
            }
            ("GET", "/admin/config") => json_reply(StatusCode::OK, &self.config_view()),
            ("POST", "/admin/reload") => self.reload().await,
            _ => json_reply(
                StatusCode::NOT_FOUND,
                &json!({"error": format!("no admin endpoint {method} {path}")}),
            ),
        }
    }
}

impl Admin {
    /// Asks the config source for the config again and applies it (off the async workers: it reads
    /// files and resolves hosts).
    async fn reload(&self) -> Response<Vec<u8>> {
        let (state, source) = (self.state.clone(), self.source.clone());
        match tokio::task::spawn_blocking(move || source.reload(&state)).await {
            Ok(Ok(v)) => json_reply(StatusCode::OK, &json!({"result": "success", "version": v})),
            Ok(Err(e)) => json_reply(
                StatusCode::UNPROCESSABLE_ENTITY,
                &json!({"result": "error", "errors": e.messages()}),
            ),
            Err(e) => json_reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                &json!({"result": "error", "errors": [e.to_string()]}),
            ),
        }
    }

    fn config_view(&self) -> Value {
        let s = self.state.snapshot();
        let status = self.state.status();
        // A control plane's key deltas change the live keys without a new version: show those (by id);
        // a file source's keys are the document's, in the order written.
        let cp = self.source.status();
        let keys = match cp {
            Some(_) => self.state.keys().keys(),
            None => s.config.keys.clone(),
        };
        let mut view = json!({
            "version": s.version,
            "hash": s.config.hash,
            "files": s.config.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
            "reload": status,
            "config": redacted(&s.config, &keys),
        });
        if let (Some(cp), Some(map)) = (cp, view.as_object_mut()) {
            map.insert("control_plane".into(), cp);
        }
        view
    }
}

/// The active config (with the live `keys`) with secrets replaced by whether they are set.
fn redacted(c: &Config, keys: &[leaky_config::ApiKey]) -> Value {
    let providers: serde_json::Map<String, Value> = c
        .providers
        .iter()
        .map(|(name, p)| {
            let scheme = if p.tls { "https" } else { "http" };
            (
                name.clone(),
                json!({
                    "base_url": format!("{scheme}://{}", p.authority()),
                    "auth": p.auth,
                    "credential": if p.credential.is_some() { "set" } else { "unset" },
                    "models": p.models,
                    "connect_timeout_ms": p.connect_timeout.as_millis() as u64,
                    "read_timeout_ms": p.read_timeout.as_millis() as u64,
                    "idle_timeout_ms": p.idle_timeout.as_millis() as u64,
                }),
            )
        })
        .collect();
    let routes: Vec<Value> = c.routes.iter().map(route_view).collect();
    let keys: Vec<Value> = keys
        .iter()
        .map(|k| json!({"id": k.id, "user": k.user, "org": k.org, "tier": k.tier, "roles": k.roles, "expires_at": k.expires_at}))
        .collect();
    json!({
        "server": {
            "listen": c.server.listen.to_string(),
            "admin_listen": c.server.admin_listen.to_string(),
            "admin_token": if c.server.admin_token.is_some() { "set" } else { "unset" },
            "threads": c.server.threads,
            "max_body_bytes": c.server.max_body_bytes,
            "grace_period_seconds": c.server.grace_period_seconds,
        },
        "providers": providers,
        "routes": routes,
        "tiers": c.tiers.iter().map(|(n, t)| (n.clone(), json!({"priority": t.priority}))).collect::<serde_json::Map<_, _>>(),
        "keys": keys,
        "flags": flags_view(c),
    })
}

/// Every configured flag, plus each flag the gateway reads that the config leaves at its default.
fn flags_view(c: &Config) -> Value {
    let view = |f: &leaky_config::Flag| {
        json!({
            "enabled": f.enabled,
            "rollout_percent": f.rollout_percent,
            "orgs": f.overrides(),
            "description": f.description,
            "source": if f.is_builtin() { "default" } else { "config" },
        })
    };
    let mut flags: serde_json::Map<String, Value> =
        c.flags.iter().map(|f| (f.name.clone(), view(f))).collect();
    for known in leaky_config::model::flags::KNOWN_FLAGS {
        if c.flags.get(known.name).is_none() {
            flags.insert(known.name.to_owned(), view(&c.flags.resolve(known)));
        }
    }
    Value::Object(flags)
}

/// One route as `/admin/config` shows it.
fn route_view(r: &leaky_config::Route) -> Value {
    let upstream = match &r.upstream {
        RouteUpstream::Fixed(t) => json!({"provider": t.provider, "path_prefix": t.path_prefix}),
        RouteUpstream::ByModel(list) => json!({"by_model": list.iter().map(|m| json!({
            "models": m.models.iter().map(|p| match p {
                leaky_config::ModelPattern::Exact(s) => s.clone(),
                leaky_config::ModelPattern::Prefix(s) => format!("{s}*"),
            }).collect::<Vec<_>>(),
            "provider": m.target.provider,
            "path_prefix": m.target.path_prefix,
        })).collect::<Vec<_>>()}),
    };
    json!({
        "name": r.name, "prefix": r.prefix, "dialect": r.dialect, "model_source": r.model_source,
        "upstream": upstream, "filters": r.filters,
    })
}
