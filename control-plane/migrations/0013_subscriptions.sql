-- Subscriptions (billing): plans, one subscription per org, and its history. Numbered 0013 while
-- 0011/0012 belong to parallel work; sqlx applies every unapplied version and does not mind gaps.
CREATE TABLE billing.plans (
    name            text PRIMARY KEY,
    tier            text NOT NULL,
    monthly_tokens  bigint NOT NULL CHECK (monthly_tokens > 0),
    price_cents     bigint NOT NULL CHECK (price_cents > 0),
    currency        text NOT NULL,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL
);

-- An org's subscription. `saga_id` is the subscribe / upgrade / renewal saga in flight (at most one:
-- a change while one runs is a conflict); the renewal job claims rows with `FOR UPDATE SKIP LOCKED`.
CREATE TABLE billing.subscriptions (
    id                    uuid PRIMARY KEY,
    org_id                uuid NOT NULL,
    -- pending (first saga running) | incomplete (first payment failed) | active | past_due | canceled
    state                 text NOT NULL CHECK (state IN ('pending', 'incomplete', 'active', 'past_due', 'canceled')),
    plan                  text NOT NULL REFERENCES billing.plans (name),
    pending_plan          text REFERENCES billing.plans (name),
    cancel_at_period_end  boolean NOT NULL DEFAULT false,
    period                integer NOT NULL DEFAULT 0,
    period_start          timestamptz,
    period_end            timestamptz,
    saga_id               uuid,
    renewal_failures      integer NOT NULL DEFAULT 0,
    next_renewal_at       timestamptz,
    idempotency_key       text NOT NULL,
    request_hash          text NOT NULL,
    created_at            timestamptz NOT NULL,
    updated_at            timestamptz NOT NULL,
    UNIQUE (org_id, idempotency_key)
);

-- One live subscription per org.
CREATE UNIQUE INDEX subscriptions_live_org ON billing.subscriptions (org_id)
    WHERE state IN ('pending', 'active', 'past_due');
CREATE INDEX subscriptions_due ON billing.subscriptions (next_renewal_at)
    WHERE state IN ('active', 'past_due') AND saga_id IS NULL;

-- What happened to a subscription, for `GET /v1/orgs/{org}/subscription`.
CREATE TABLE billing.subscription_history (
    subscription_id  uuid NOT NULL REFERENCES billing.subscriptions (id),
    seq              bigserial,
    event            text NOT NULL,
    detail           jsonb NOT NULL DEFAULT '{}',
    at               timestamptz NOT NULL,
    PRIMARY KEY (subscription_id, seq)
);

-- Tenancy: the tier an org's plan gives every key of the org (NULL: each key's own tier). Written only
-- through `tenancy::orgs::set_plan_tier`, which touches the org's keys so the change feed pushes them.
ALTER TABLE tenancy.orgs ADD COLUMN plan_tier text;
