-- Cross-service tracing (issue 17): the W3C `traceparent` of the span whose transaction appended the
-- event (NULL when no traced request or message did, e.g. a background job). The relay continues
-- that trace with its publish span and sends the span on as the Kafka `traceparent` header. Nullable
-- and without a default: adding it rewrites no rows.
ALTER TABLE outbox.events ADD COLUMN traceparent text;
