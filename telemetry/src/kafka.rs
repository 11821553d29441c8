//! Trace context through Kafka: the `traceparent` header a producer writes ([`with_traceparent`]),
//! the context a consumer reads back ([`extract`]), and the consumer spans that continue it
//! ([`consumer_span`] per message, [`Batch`] for a batch consumer).

use opentelemetry::trace::SpanKind;
use opentelemetry::KeyValue;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};

use crate::context::{parse_traceparent, SpanContext};
use crate::span::Span;

/// The header name (W3C Trace Context's, as the proxy's usage events carry it).
pub const HEADER: &str = "traceparent";

/// `headers` plus `traceparent` naming `ctx`.
pub fn with_traceparent(headers: OwnedHeaders, ctx: &SpanContext) -> OwnedHeaders {
    let tp = ctx.traceparent();
    headers.insert(Header {
        key: HEADER,
        value: Some(tp.as_bytes()),
    })
}

/// The producer's span context from a message's `traceparent` header, if valid.
pub fn extract<M: Message>(msg: &M) -> Option<SpanContext> {
    let headers = msg.headers()?;
    headers
        .iter()
        .find(|h| h.key == HEADER)
        .and_then(|h| h.value)
        .and_then(parse_traceparent)
}

/// A consumer span for one message, in its producer's trace (a new trace when it carries none).
pub fn consumer_span<M: Message>(name: &'static str, consumer: &str, msg: &M) -> Span {
    let mut span = Span::root(name, SpanKind::Consumer, extract(msg));
    if span.is_recording() {
        span.attr(KeyValue::new("messaging.system", "kafka"));
        span.attr(KeyValue::new("messaging.operation.type", "process"));
        span.attr(KeyValue::new(
            "messaging.destination.name",
            msg.topic().to_owned(),
        ));
        span.attr(KeyValue::new(
            "messaging.consumer.group.name",
            consumer.to_owned(),
        ));
        span.attr(KeyValue::new(
            "messaging.destination.partition.id",
            msg.partition().to_string(),
        ));
        span.attr(KeyValue::new("messaging.kafka.offset", msg.offset()));
    }
    span
}

/// The spans of one consumed batch: a batch span (a trace of its own, sampled by the ratio, linked
/// to the message spans) and, for each message whose `traceparent` is sampled, a message span in its
/// producer's trace, so a usage event's trace shows where it was stored. All end at
/// [`Batch::finish`], when the batch is stored. Per batch rather than per message, because the
/// batch is the unit of work (one write, one commit); the message spans are what puts that work
/// into each producer's trace. Unsampled messages get none: nothing could keep them.
pub struct Batch {
    batch: Span,
    messages: Vec<Span>,
}

impl Batch {
    /// The spans of `msgs` consumed by `consumer`.
    pub fn start<'m, M: Message + 'm>(
        name: &'static str,
        consumer: &str,
        msgs: impl IntoIterator<Item = &'m M>,
    ) -> Batch {
        let mut batch = Span::root(name, SpanKind::Consumer, None);
        let mut messages = Vec::new();
        let mut count = 0i64;
        for m in msgs {
            count += 1;
            if !batch.is_recording() || !extract(m).is_some_and(|c| c.sampled) {
                continue;
            }
            let mut span = consumer_span(name, consumer, m);
            span.link(batch.context());
            batch.link(span.context());
            messages.push(span);
        }
        if batch.is_recording() {
            batch.attr(KeyValue::new("messaging.system", "kafka"));
            batch.attr(KeyValue::new("messaging.batch.message_count", count));
        }
        Batch { batch, messages }
    }

    /// The batch span (its ids go on the batch's log lines).
    pub fn span(&self) -> &Span {
        &self.batch
    }

    /// The `tracing` span to handle the batch in: the batch span's `trace_id` and `span_id`.
    pub fn log_span(&self) -> tracing::Span {
        let ctx = self.batch.context();
        tracing::info_span!(
            "consume",
            trace_id = %ctx.trace_id_hex(),
            span_id = %ctx.span_id_hex(),
            traced_messages = self.messages.len(),
        )
    }

    /// Ends every span now.
    pub fn finish(self) {
        for m in self.messages {
            m.end();
        }
        self.batch.end();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use rdkafka::message::{OwnedMessage, Timestamp};

    use super::*;

    fn message(headers: Option<OwnedHeaders>) -> OwnedMessage {
        OwnedMessage::new(
            None,
            None,
            "t".into(),
            Timestamp::NotAvailable,
            0,
            0,
            headers,
        )
    }

    #[test]
    fn the_header_round_trips_and_bad_ones_are_ignored() {
        let ctx = SpanContext {
            trace_id: 0x4bf92f3577b34da6a3ce929d0e0e4736,
            span_id: 0x00f067aa0ba902b7,
            sampled: true,
        };
        let h = with_traceparent(OwnedHeaders::new(), &ctx);
        assert_eq!(extract(&message(Some(h))), Some(ctx));
        assert_eq!(extract(&message(None)), None);
        let bad = OwnedHeaders::new().insert(Header {
            key: HEADER,
            value: Some("00-zz-01"),
        });
        assert_eq!(extract(&message(Some(bad))), None);
    }

    #[test]
    fn a_consumer_span_continues_the_producers_trace() {
        let ctx = SpanContext {
            trace_id: 42,
            span_id: 43,
            sampled: false,
        };
        let m = message(Some(with_traceparent(OwnedHeaders::new(), &ctx)));
        let s = consumer_span("consume", "g", &m);
        assert_eq!(s.context().trace_id, 42);
        assert_ne!(s.context().span_id, 43);
        assert!(!s.context().sampled, "the producer's decision holds");
        let fresh = consumer_span("consume", "g", &message(None));
        assert_ne!(fresh.context().trace_id, 42);
    }
}
