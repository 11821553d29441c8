-- Bounded context "tenancy": orgs, their users, tiers and API keys. Only the tenancy module reads or
-- writes this schema; other contexts go through its Rust API.
CREATE SCHEMA tenancy;

CREATE TABLE tenancy.orgs (
    id          uuid PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    -- Bumped on every change; the API's ETag. PATCH with a stale If-Match gets 412.
    version     bigint NOT NULL DEFAULT 1
);

CREATE TABLE tenancy.users (
    id          uuid PRIMARY KEY,
    org_id      uuid NOT NULL REFERENCES tenancy.orgs (id),
    email       text NOT NULL,
    name        text NOT NULL DEFAULT '',
    roles       text[] NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (org_id, email)
);

CREATE TABLE tenancy.tiers (
    name        text PRIMARY KEY,
    limits      jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    version     bigint NOT NULL DEFAULT 1
);

-- The demo tiers of config/dev.yaml, so a fresh control plane can issue keys at once.
INSERT INTO tenancy.tiers (name, limits) VALUES
    ('free', '{"requests_per_minute": 20, "tokens_per_minute": 10000, "tokens_per_day": 100000}'),
    ('pro', '{"requests_per_minute": 600, "tokens_per_minute": 200000, "tokens_per_day": 5000000}'),
    ('enterprise', '{"requests_per_minute": 6000, "tokens_per_minute": 2000000}');

CREATE TABLE tenancy.api_keys (
    id           uuid PRIMARY KEY,
    org_id       uuid NOT NULL REFERENCES tenancy.orgs (id),
    name         text NOT NULL,
    -- Public, shown in listings and logs: the `<prefix>` of `lt-<prefix>_<secret>`.
    prefix       text NOT NULL UNIQUE,
    -- SHA-256 of the whole key string, exactly what the proxy hashes on every request. The secret itself
    -- is never stored.
    key_sha256   bytea NOT NULL UNIQUE CHECK (octet_length(key_sha256) = 32),
    tier         text NOT NULL REFERENCES tenancy.tiers (name),
    models       text[] NOT NULL DEFAULT '{}',
    expires_at   timestamptz,
    -- Set at revoke (now) or at rotate (now + grace period): the key works until this instant.
    revoked_at   timestamptz,
    last_used_at timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    rotated_from uuid REFERENCES tenancy.api_keys (id),
    grace_until  timestamptz
);

CREATE INDEX api_keys_org ON tenancy.api_keys (org_id, id);
