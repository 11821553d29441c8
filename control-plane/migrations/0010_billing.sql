-- Bounded context "billing": token purchases and the persisted saga orchestration that drives them.
-- Only the billing module reads or writes this schema; the ledger and the data plane's balance mirror
-- are reached through their Rust APIs, never their tables.
CREATE SCHEMA billing;

-- One orchestrated saga. Every transition commits here before the next side effect, so a process that
-- dies between two steps leaves a row another worker resumes once `locked_until` has passed.
CREATE TABLE billing.sagas (
    id                      uuid PRIMARY KEY,
    kind                    text NOT NULL,
    org_id                  uuid NOT NULL,
    -- running | compensating | completed | compensated | needs_attention
    state                   text NOT NULL CHECK (state IN ('running', 'compensating', 'completed', 'compensated', 'needs_attention')),
    -- The step to run next (forward or compensation, per `state`); the last one run when finished.
    step                    text NOT NULL,
    -- Attempts of `step` so far (reset when a step succeeds).
    attempts                integer NOT NULL DEFAULT 0,
    next_run_at             timestamptz NOT NULL,
    deadline                timestamptz NOT NULL,
    data                    jsonb NOT NULL,
    locked_by               text,
    locked_until            timestamptz,
    needs_attention_reason  text,
    -- Why compensation started (a decline, a step out of retries).
    reason                  text,
    created_at              timestamptz NOT NULL,
    updated_at              timestamptz NOT NULL
);

-- What workers claim: unfinished sagas, soonest first.
CREATE INDEX sagas_due ON billing.sagas (next_run_at) WHERE state IN ('running', 'compensating');
CREATE INDEX sagas_state ON billing.sagas (state, created_at);

-- The step history operators see: one row per attempt, written `started` before the side effect and
-- updated to its outcome after.
CREATE TABLE billing.saga_steps (
    saga_id    uuid NOT NULL REFERENCES billing.sagas (id),
    seq        integer NOT NULL,
    step       text NOT NULL,
    direction  text NOT NULL CHECK (direction IN ('forward', 'compensate')),
    status     text NOT NULL CHECK (status IN ('started', 'succeeded', 'failed')),
    attempt    integer NOT NULL,
    detail     jsonb NOT NULL DEFAULT '{}',
    at         timestamptz NOT NULL,
    PRIMARY KEY (saga_id, seq)
);

-- A token purchase; its saga has the same id. The unique key makes concurrent duplicates of one
-- `Idempotency-Key` one purchase.
CREATE TABLE billing.purchases (
    id               uuid PRIMARY KEY REFERENCES billing.sagas (id),
    org_id           uuid NOT NULL,
    tokens           bigint NOT NULL CHECK (tokens > 0),
    amount_cents     bigint NOT NULL CHECK (amount_cents > 0),
    currency         text NOT NULL,
    idempotency_key  text NOT NULL,
    -- sha256 of the canonical request, to tell a replay from a different request under the same key.
    request_hash     text NOT NULL,
    payment_intent   text,
    created_at       timestamptz NOT NULL,
    UNIQUE (org_id, idempotency_key)
);

CREATE INDEX purchases_org ON billing.purchases (org_id, created_at, id);
CREATE INDEX purchases_payment_intent ON billing.purchases (payment_intent);

-- Payment webhooks already seen: a redelivered event id inserts nothing and has no second effect.
CREATE TABLE billing.processed_webhooks (
    event_id        text PRIMARY KEY,
    type            text NOT NULL,
    payment_intent  text,
    received_at     timestamptz NOT NULL
);
