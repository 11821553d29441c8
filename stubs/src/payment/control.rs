//! Test-only control endpoints (`/_stub/faults`, `/_stub/state`,
//! `/_stub/reset`, no API key), `/metrics`, and the middleware counting
//! requests by route and status.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::faults::PaymentFaults;
use super::model::{Reply, StripeError};
use super::Ctx;

type Shared = State<Arc<Ctx>>;

/// Replaces the armed faults (counts not given are 0).
pub async fn set_faults(State(ctx): Shared, body: Bytes) -> Response {
    match serde_json::from_slice::<PaymentFaults>(&body) {
        Ok(plan) => {
            *ctx.faults() = plan.clone();
            Reply::ok(&plan).response()
        }
        Err(e) => StripeError::param("body", "parameter_invalid", format!("bad fault plan: {e}"))
            .reply()
            .response(),
    }
}

/// The faults still armed.
pub async fn get_faults(State(ctx): Shared) -> Response {
    let plan = ctx.faults().clone();
    Reply::ok(&plan).response()
}

/// Everything the stub holds: intents, refunds, events, endpoints, deliveries.
pub async fn state(State(ctx): Shared) -> Response {
    let (intents, refunds, events) = {
        let s = ctx.store();
        (s.intents(), s.refunds_of(None), s.events().to_vec())
    };
    let endpoints = ctx
        .webhooks
        .endpoints
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let deliveries: Vec<_> = ctx
        .webhooks
        .log
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .cloned()
        .collect();
    let faults = ctx.faults().clone();
    Reply::ok(&json!({
        "payment_intents": intents,
        "refunds": refunds,
        "events": events,
        "webhook_endpoints": endpoints,
        "deliveries": deliveries,
        "faults": faults,
    }))
    .response()
}

/// Forgets everything and re-arms the configured faults.
pub async fn reset(State(ctx): Shared) -> Response {
    *ctx.store() = super::store::Store::default();
    *ctx.faults() = ctx.cfg.faults.clone();
    ctx.keys.reset();
    ctx.webhooks.reset();
    StatusCode::NO_CONTENT.into_response()
}

pub async fn metrics(State(ctx): Shared) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        ctx.metrics.render("payment"),
    )
        .into_response()
}

/// The route template of `path`: object ids become `{id}` so the metric's
/// label set stays bounded.
fn route_of(path: &str) -> String {
    path.split('/')
        .map(|seg| {
            let id = ["pi_", "re_", "we_", "evt_"]
                .iter()
                .any(|p| seg.starts_with(p));
            if id {
                "{id}"
            } else {
                seg
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Counts every request by route template and status.
pub async fn observe(State(ctx): Shared, req: Request, next: Next) -> Response {
    let label = format!("{} {}", req.method(), route_of(req.uri().path()));
    let resp = next.run(req).await;
    ctx.metrics.record(&label, resp.status().as_u16());
    resp
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    #[test]
    fn ids_are_folded_out_of_metric_labels() {
        assert_eq!(
            super::route_of("/v1/payment_intents/pi_abc/capture"),
            "/v1/payment_intents/{id}/capture"
        );
        assert_eq!(super::route_of("/v1/refunds"), "/v1/refunds");
    }
}
