-- Bounded context "notify": org webhooks, the notifications waiting to be delivered (webhook or email)
-- and the armed/fired state of balance thresholds. Only the notify module reads or writes this schema.
CREATE SCHEMA notify;

-- An org's webhook endpoint. `secret` signs every delivery (shown once, at creation). After
-- `consecutive_failures` reaches the policy's limit the endpoint is disabled (`enabled = false`).
CREATE TABLE notify.endpoints (
    id                   uuid PRIMARY KEY,
    org_id               uuid NOT NULL,
    url                  text NOT NULL,
    -- Event types, or `{*}` for every type.
    events               text[] NOT NULL,
    secret               text NOT NULL,
    enabled              boolean NOT NULL DEFAULT true,
    consecutive_failures integer NOT NULL DEFAULT 0,
    disabled_at          timestamptz,
    created_at           timestamptz NOT NULL
);
CREATE INDEX endpoints_org ON notify.endpoints (org_id, created_at);

-- One notification to one target: a webhook endpoint (`target` = its id) or an email address. The
-- unique key makes a redelivered domain event (or a repeated job) one notification per target.
CREATE TABLE notify.deliveries (
    id              uuid PRIMARY KEY,
    event_id        text NOT NULL,
    channel         text NOT NULL CHECK (channel IN ('webhook', 'email')),
    target          text NOT NULL,
    org_id          uuid NOT NULL,
    type            text NOT NULL,
    -- The webhook body `{id, type, time, org, data}` (email renders it).
    body            jsonb NOT NULL,
    status          text NOT NULL CHECK (status IN ('pending', 'delivered', 'failed', 'skipped', 'cancelled')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    -- A worker's claim: nobody else takes the row before then.
    locked_until    timestamptz,
    last_error      text,
    created_at      timestamptz NOT NULL,
    finished_at     timestamptz,
    UNIQUE (event_id, channel, target)
);
-- What workers claim: pending rows, soonest first.
CREATE INDEX deliveries_due ON notify.deliveries (next_attempt_at) WHERE status = 'pending';

-- Balance thresholds: `armed` until the level is crossed (one notification), re-armed when a credit
-- lifts the balance back above it. `version` is the ledger version last applied (older snapshots are
-- ignored).
CREATE TABLE notify.thresholds (
    org_id  uuid NOT NULL,
    kind    text NOT NULL,
    level   integer NOT NULL,
    armed   boolean NOT NULL,
    version bigint NOT NULL,
    PRIMARY KEY (org_id, kind, level)
);

-- An org's own notification address, emailed besides its `org-admin` users (e.g. an ops mailbox).
CREATE TABLE notify.org_settings (
    org_id     uuid PRIMARY KEY,
    email      text,
    updated_at timestamptz NOT NULL
);
