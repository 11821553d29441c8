-- Bounded context "outbox": domain events written in the same transaction as the change they describe,
-- published to Kafka by the relay. Only the outbox module reads or writes this schema; other contexts
-- call `outbox::append` inside their own transaction.
CREATE SCHEMA outbox;

CREATE TABLE outbox.events (
    id              uuid PRIMARY KEY,
    -- Insertion order across aggregates; within one aggregate it follows `aggregate_seq` (appends to
    -- one aggregate are serialized by an advisory lock held to commit).
    seq             bigserial UNIQUE,
    aggregate_type  text NOT NULL,
    aggregate_id    text NOT NULL,
    aggregate_seq   bigint NOT NULL CHECK (aggregate_seq > 0),
    topic           text NOT NULL,
    -- The CloudEvents `type`, e.g. `key.created`.
    type            text NOT NULL,
    payload         jsonb NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- Set only after the broker acknowledged the message.
    sent_at         timestamptz,
    UNIQUE (aggregate_type, aggregate_id, aggregate_seq)
);

-- What the relay scans (unsent, in order) and what pruning deletes (sent, oldest first).
CREATE INDEX events_unsent ON outbox.events (seq) WHERE sent_at IS NULL;
CREATE INDEX events_sent ON outbox.events (sent_at) WHERE sent_at IS NOT NULL;
