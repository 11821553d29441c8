-- Bounded context "ledger": each org's token account as an append-only event stream, its projections
-- (the balance and the credit blocks), and the processed-events table of the control plane's idempotent
-- Kafka consumers. Only `ledger` (and `consume` for `processed_events`) read or write this schema.
CREATE SCHEMA ledger;

-- The streams. `version` is dense per org (1, 2, 3, …): an append names the version it expects, so two
-- writers that read the same version cannot both append (the primary key refuses the second).
CREATE TABLE ledger.entries (
    org_id      uuid NOT NULL,
    version     bigint NOT NULL CHECK (version > 0),
    id          uuid NOT NULL UNIQUE,
    kind        text NOT NULL CHECK (kind IN ('purchased', 'granted', 'consumed', 'refunded', 'expired')),
    tokens      bigint NOT NULL CHECK (tokens >= 0),
    -- What made the entry: purchase id, grant id, request id, `expire:<block id>`. One entry per
    -- (org, kind, ref): a command repeated with its ref is a no-op.
    ref         text NOT NULL,
    expires_at  timestamptz,
    occurred_at timestamptz NOT NULL,
    -- How the entry moved the credit blocks (`draws`, `overdraft`, `repaid`, `block`) plus free detail.
    data        jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (org_id, version),
    UNIQUE (org_id, kind, ref)
);

-- Projection: one row per org with entries. `debt` is consumption that found no credit (an overdraft),
-- paid back first by the next credit.
CREATE TABLE ledger.balances (
    org_id     uuid PRIMARY KEY,
    version    bigint NOT NULL,
    purchased  bigint NOT NULL DEFAULT 0,
    granted    bigint NOT NULL DEFAULT 0,
    consumed   bigint NOT NULL DEFAULT 0,
    refunded   bigint NOT NULL DEFAULT 0,
    expired    bigint NOT NULL DEFAULT 0,
    balance    bigint NOT NULL DEFAULT 0,
    debt       bigint NOT NULL DEFAULT 0 CHECK (debt >= 0),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CHECK (balance = purchased + granted - consumed - refunded - expired)
);

-- Projection: one block per credit entry (its id is the entry's), what remains of it and when it
-- expires. Consumption draws from the soonest-expiring block first.
CREATE TABLE ledger.credit_blocks (
    id         uuid PRIMARY KEY,
    org_id     uuid NOT NULL,
    kind       text NOT NULL CHECK (kind IN ('purchased', 'granted')),
    ref        text NOT NULL,
    tokens     bigint NOT NULL CHECK (tokens >= 0),
    remaining  bigint NOT NULL CHECK (remaining >= 0),
    expires_at timestamptz,
    created_at timestamptz NOT NULL,
    UNIQUE (org_id, kind, ref)
);

CREATE INDEX credit_blocks_draw ON ledger.credit_blocks (org_id, expires_at) WHERE remaining > 0;
CREATE INDEX credit_blocks_due ON ledger.credit_blocks (expires_at)
    WHERE remaining > 0 AND expires_at IS NOT NULL;

-- Idempotent consumers (`consume::once`): an event's effect and its row here commit together.
CREATE TABLE ledger.processed_events (
    consumer     text NOT NULL,
    event_id     text NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
