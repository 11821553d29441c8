//! The `/v1` handlers. Every POST goes through [`post`]: API key, then the
//! idempotency slot, then the fault plan, then the state change, then the
//! webhooks the change raised.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;

use super::faults::{Fault, PaymentOp};
use super::idempotency::{fingerprint, Stored};
use super::model::{unix_now, Reply, StripeError};
use super::webhooks::Endpoint;
use super::{params, Ctx};

type Shared = State<Arc<Ctx>>;

/// What a POST asks for.
enum Action {
    Create,
    Capture(String),
    Cancel(String),
    Refund,
    Endpoint,
}

impl Action {
    fn op(&self) -> Option<PaymentOp> {
        match self {
            Action::Create => Some(PaymentOp::Create),
            Action::Capture(_) => Some(PaymentOp::Capture),
            Action::Cancel(_) => Some(PaymentOp::Cancel),
            Action::Refund => Some(PaymentOp::Refund),
            Action::Endpoint => None,
        }
    }
}

/// The API key of `Authorization: Bearer sk_test_...`.
fn api_key(headers: &HeaderMap) -> Result<String, StripeError> {
    crate::common::bearer(headers)
        .filter(|k| k.starts_with("sk_test_"))
        .map(str::to_string)
        .ok_or_else(StripeError::api_key)
}

pub async fn create(State(ctx): Shared, uri: Uri, h: HeaderMap, body: Bytes) -> Response {
    post(ctx, Action::Create, uri, h, body).await
}

pub async fn capture(
    State(ctx): Shared,
    Path(id): Path<String>,
    uri: Uri,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    post(ctx, Action::Capture(id), uri, h, body).await
}

pub async fn cancel(
    State(ctx): Shared,
    Path(id): Path<String>,
    uri: Uri,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    post(ctx, Action::Cancel(id), uri, h, body).await
}

pub async fn refund(State(ctx): Shared, uri: Uri, h: HeaderMap, body: Bytes) -> Response {
    post(ctx, Action::Refund, uri, h, body).await
}

pub async fn create_endpoint(State(ctx): Shared, uri: Uri, h: HeaderMap, body: Bytes) -> Response {
    post(ctx, Action::Endpoint, uri, h, body).await
}

pub async fn retrieve(State(ctx): Shared, Path(id): Path<String>, h: HeaderMap) -> Response {
    if let Err(e) = api_key(&h) {
        return e.reply().response();
    }
    ctx.pace().await;
    let found = ctx.store().get(&id);
    match found {
        Ok(pi) => Reply::ok(&pi).response(),
        Err(e) => e.reply().response(),
    }
}

#[derive(Deserialize)]
pub struct RefundQuery {
    payment_intent: Option<String>,
}

pub async fn list_refunds(State(ctx): Shared, q: Query<RefundQuery>, h: HeaderMap) -> Response {
    if let Err(e) = api_key(&h) {
        return e.reply().response();
    }
    ctx.pace().await;
    let data = ctx.store().refunds_of(q.payment_intent.as_deref());
    Reply::ok(&json!({"object": "list", "data": data, "has_more": false, "url": "/v1/refunds"}))
        .response()
}

pub async fn unknown_url(uri: Uri) -> Response {
    StripeError::not_found_url(uri.path()).reply().response()
}

/// A finished POST: the stored reply and what the wire sees of it.
struct Outcome {
    reply: Reply,
    fault: Option<Fault>,
}

impl Outcome {
    /// Stored for replay unless it is a 5xx without effect.
    fn storable(&self) -> bool {
        self.fault != Some(Fault::Error)
    }

    async fn send(self, idempotency_key: Option<&str>) -> Response {
        let mut resp = match self.fault {
            Some(Fault::Timeout(d)) => {
                tokio::time::sleep(d).await;
                self.reply.response()
            }
            Some(Fault::ApplyThenFail) => StripeError::server().reply().response(),
            _ => self.reply.response(),
        };
        if let Some(v) = idempotency_key.and_then(|k| HeaderValue::from_str(k).ok()) {
            resp.headers_mut().insert("idempotency-key", v);
        }
        resp
    }
}

async fn post(ctx: Arc<Ctx>, action: Action, uri: Uri, h: HeaderMap, body: Bytes) -> Response {
    let key = match api_key(&h) {
        Ok(k) => k,
        Err(e) => return e.reply().response(),
    };
    ctx.pace().await;
    let Some(idem) = h.get("idempotency-key").and_then(|v| v.to_str().ok()) else {
        return perform(&ctx, &action, &h, &body).send(None).await;
    };
    let fp = fingerprint(uri.path(), &body);
    let slot = ctx.keys.slot(&key, idem);
    // Held while the first request runs: concurrent ones with the key wait here.
    let mut guard = slot.lock().await;
    if let Some(stored) = guard.as_ref() {
        if stored.fingerprint != fp {
            return StripeError::idempotency(
                StatusCode::BAD_REQUEST,
                "idempotency_key_in_use",
                "Keys for idempotent requests can only be used with the same parameters they were first used with.",
            )
            .reply()
            .response();
        }
        let mut resp = stored.reply.response();
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
        return resp;
    }
    let outcome = perform(&ctx, &action, &h, &body);
    if outcome.storable() {
        *guard = Some(Stored {
            fingerprint: fp,
            reply: outcome.reply.clone(),
        });
    }
    drop(guard);
    outcome.send(Some(idem)).await
}

/// Takes this request's fault, runs the state change (unless the fault is a
/// plain 5xx) and dispatches the webhooks it raised.
fn perform(ctx: &Ctx, action: &Action, h: &HeaderMap, body: &[u8]) -> Outcome {
    let fault = action.op().and_then(|op| {
        let mut plan = ctx.faults();
        plan.from_header(h).or_else(|| plan.take(op))
    });
    if fault == Some(Fault::Error) {
        return Outcome {
            reply: StripeError::server().reply(),
            fault,
        };
    }
    let decline = fault == Some(Fault::Decline);
    let (reply, events) = {
        let mut store = ctx.store();
        let reply = apply(ctx, &mut store, action, body, decline);
        (reply, store.take_raised())
    };
    let copies = if ctx.faults().duplicate_webhooks {
        2
    } else {
        1
    };
    for ev in &events {
        ctx.webhooks
            .dispatch(ev, copies, || ctx.faults().take_drop());
    }
    Outcome { reply, fault }
}

fn apply(
    ctx: &Ctx,
    store: &mut super::store::Store,
    action: &Action,
    body: &[u8],
    decline: bool,
) -> Reply {
    let ids = &ctx.ids;
    let result = match action {
        Action::Create => params::create(body)
            .and_then(|p| store.create(ids, p, decline))
            .map(|pi| Reply::ok(&pi)),
        Action::Capture(id) => params::empty(body, &["amount_to_capture", "metadata"])
            .and_then(|()| store.capture(ids, id))
            .map(|pi| Reply::ok(&pi)),
        Action::Cancel(id) => params::empty(body, &["cancellation_reason"])
            .and_then(|()| store.cancel(ids, id))
            .map(|pi| Reply::ok(&pi)),
        Action::Refund => params::refund(body)
            .and_then(|p| store.refund(ids, p))
            .map(|r| Reply::ok(&r)),
        Action::Endpoint => params::endpoint(body).map(|p| {
            let ep = Endpoint {
                id: ids.next("we_", 24),
                object: "webhook_endpoint",
                url: p.url,
                enabled_events: p.enabled_events,
                secret: ids.next("whsec_", 32),
                status: "enabled",
                created: unix_now(),
            };
            ctx.webhooks.add(ep.clone());
            Reply::ok(&ep)
        }),
    };
    result.unwrap_or_else(|e| e.reply())
}
