-- Bounded context "audit": who changed what, when. Rows are written in the same transaction as the change.
CREATE SCHEMA audit;

CREATE TABLE audit.events (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at           timestamptz NOT NULL DEFAULT now(),
    actor        text NOT NULL,
    action       text NOT NULL,
    object_kind  text NOT NULL,
    object_id    text NOT NULL,
    detail       jsonb NOT NULL DEFAULT '{}'
);

CREATE INDEX events_object ON audit.events (object_id, id);
