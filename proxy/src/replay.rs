//! A response-cache hit answered from its stored [`Entry`] (issue 18, `docs/cache.md`).
//!
//! The stored bytes are the provider's own (a stream is its SSE in the caller's dialect, `[DONE]`
//! included), so the replay only has to meter them the way a live answer is metered: they go
//! through the request's meter (`Ledger::on_chunk`), which reads the original usage and strips a
//! usage chunk the caller did not ask for exactly as on a live stream; the holds settle with the
//! route's `charge` of that usage (`Ledger::replaying`) before any byte is written. The answer
//! goes out at once, whole, with a `Content-Length`: no artificial pacing.
//!
//! Headers: the stored status and `content-type`, the gateway's usual ones (`x-request-id`, what
//! the chain added: the `x-ratelimit-*` family), `x-leaky-served-model`, `x-leaky-cache: hit` (written by
//! `relay::finish_headers`) and `Age` (whole seconds since it was stored).

use crate::ctx::{Ctx, Fail};
use crate::relay::finish_headers;
use crate::response_cache::Outcome;
use leaky_cache::Entry;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

/// Answers the request from `entry`; `charge` is the route's share of the original usage the
/// holds settle with; `now_ms` the unix time in milliseconds (for `Age`).
pub(crate) async fn replay(
    session: &mut Session,
    ctx: &mut Ctx,
    entry: &Entry,
    charge: f64,
    now_ms: u64,
) -> Result<(), Fail> {
    let mut out = head(entry).map_err(Fail::Abort)?;
    ctx.ledger.replaying(charge);
    ctx.ledger.on_response(entry.status, &out.headers);
    let body = ctx.ledger.on_chunk(entry.body.clone());
    let tail = ctx.ledger.settle().await;
    let len = body.len() + tail.len();
    ctx.exchange.served_model = entry.served_model.clone();
    gateway_headers(&mut out, ctx, entry, len, now_ms).map_err(Fail::Abort)?;
    ctx.response.status = entry.status;
    ctx.response.sse = entry.content_type.starts_with("text/event-stream");
    session
        .write_response_header(Box::new(out), false)
        .await
        .map_err(Fail::Abort)?;
    ctx.response.started = true;
    ctx.response.bytes = len as u64;
    let body = match (body.is_empty(), tail.is_empty()) {
        (_, true) => body,
        (true, false) => tail,
        (false, false) => [body, tail].concat().into(),
    };
    session
        .write_response_body(Some(body), true)
        .await
        .map_err(Fail::Abort)
}

/// The stored status and content type (what the meter needs to read the body).
fn head(entry: &Entry) -> pingora::Result<ResponseHeader> {
    let mut out = ResponseHeader::build_no_case(entry.status, Some(8))?;
    if !entry.content_type.is_empty() {
        out.insert_header(http::header::CONTENT_TYPE, entry.content_type.as_str())?;
    }
    Ok(out)
}

/// `Content-Length`, the served model, `x-leaky-cache: hit`, `Age`, then what every response
/// carries (`x-request-id`, the chain's headers).
fn gateway_headers(
    out: &mut ResponseHeader,
    ctx: &mut Ctx,
    entry: &Entry,
    len: usize,
    now_ms: u64,
) -> pingora::Result<()> {
    out.insert_header(http::header::CONTENT_LENGTH, len)?;
    let served = entry.served_model.as_deref().or(ctx.req.model.as_deref());
    if let Some(v) = served.and_then(|m| http::HeaderValue::from_str(m).ok()) {
        out.insert_header("x-leaky-served-model", v)?;
    }
    ctx.response.cache = Some(Outcome::Hit);
    out.insert_header(http::header::AGE, age_seconds(entry.stored_at_ms, now_ms))?;
    finish_headers(out, ctx)
}

/// Whole seconds since `stored_ms` (0 for a clock that went back).
fn age_seconds(stored_ms: u64, now_ms: u64) -> u64 {
    now_ms.saturating_sub(stored_ms) / 1000
}

/// The unix time in milliseconds.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::metering::Metering;
    use bytes::Bytes;

    fn entry(body: &'static str, content_type: &str) -> Entry {
        Entry {
            status: 200,
            content_type: content_type.into(),
            body: Bytes::from_static(body.as_bytes()),
            stored_at_ms: 10_000,
            provider: "openai".into(),
            served_model: Some("gpt-4o-mini".into()),
            usage: None,
        }
    }

    #[test]
    fn age_is_whole_seconds_and_never_negative() {
        assert_eq!(age_seconds(10_000, 10_999), 0);
        assert_eq!(age_seconds(10_000, 12_500), 2);
        assert_eq!(age_seconds(10_000, 9_000), 0);
    }

    #[test]
    fn the_head_has_the_stored_status_and_type() {
        let h = head(&entry("{}", "application/json")).unwrap();
        assert_eq!(h.status.as_u16(), 200);
        assert_eq!(h.headers[http::header::CONTENT_TYPE], "application/json");
        assert!(!head(&entry("{}", ""))
            .unwrap()
            .headers
            .contains_key(http::header::CONTENT_TYPE));
    }

    #[test]
    fn the_gateway_headers_have_age_and_length() {
        let mut ctx = Ctx::new();
        ctx.req.request_id = "req-1".into();
        ctx.req.response_headers.push((
            http::HeaderName::from_static("x-ratelimit-remaining-requests"),
            http::HeaderValue::from_static("9"),
        ));
        let e = entry("{}", "application/json");
        let mut out = head(&e).unwrap();
        gateway_headers(&mut out, &mut ctx, &e, 2, 13_000).unwrap();
        let h = &out.headers;
        assert_eq!(ctx.response.cache, Some(Outcome::Hit));
        assert_eq!(h[http::header::AGE], "3");
        assert_eq!(h[http::header::CONTENT_LENGTH], "2");
        assert_eq!(h["x-request-id"], "req-1");
        assert_eq!(h["x-ratelimit-remaining-requests"], "9");
        assert_eq!(h["x-leaky-served-model"], "gpt-4o-mini");
    }

    /// The meter reads the stored answer's usage on a hit, as it would on the live answer.
    #[tokio::test]
    async fn the_meter_reads_the_original_usage_from_the_stored_bytes() {
        let mut ctx = Ctx::new();
        ctx.ledger.meter(Metering::openai_chat(5, None));
        let e = entry(
            r#"{"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":9,"total_tokens":16}}"#,
            "application/json",
        );
        let out = head(&e).unwrap();
        ctx.ledger.replaying(0.0);
        ctx.ledger.on_response(200, &out.headers);
        assert_eq!(ctx.ledger.on_chunk(e.body.clone()), e.body);
        ctx.ledger.settle().await;
        let u = ctx.ledger.usage().unwrap();
        assert_eq!((u.prompt, u.completion), (7, 9));
        assert_eq!(ctx.ledger.charged_tokens(), Some(0));
    }

    /// A stored stream carries the usage chunk the gateway asked for; a hit whose caller did not
    /// ask for it gets it stripped, and the meter still reads it.
    #[tokio::test]
    async fn a_usage_chunk_the_caller_did_not_ask_for_is_stripped_on_replay() {
        let stream = concat!(
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":2,\"total_tokens\":6}}\n\n",
            "data: [DONE]\n\n",
        );
        let e = entry(stream, "text/event-stream");
        let out = head(&e).unwrap();
        let mut ctx = Ctx::new();
        ctx.ledger.meter(Metering::openai_stream(3, true));
        ctx.ledger.replaying(1.0);
        ctx.ledger.on_response(200, &out.headers);
        let body = ctx.ledger.on_chunk(e.body.clone());
        let tail = ctx.ledger.settle().await;
        let sent = String::from_utf8([body, tail].concat()).unwrap();
        assert!(!sent.contains("usage"), "{sent}");
        assert!(
            sent.contains("\"hi\"") && sent.ends_with("data: [DONE]\n\n"),
            "{sent}"
        );
        let u = ctx.ledger.usage().unwrap();
        assert_eq!((u.prompt, u.completion), (4, 2));
    }
}
