-- Two parts: tenancy's change feed (owned by tenancy), and the config server's schema (context "config").

-- Tenancy change feed. Every change the data plane must see (a key created, rotated, revoked, re-tiered;
-- a tier created or edited) bumps one revision counter in the same transaction, and a key row remembers
-- the revision that last changed it. The config server asks "what changed since revision R?" through
-- tenancy's Rust API (`tenancy::feed`), so it never scans every key to find one change. Triggers, not
-- application code, bump it: no write path can forget. The counter's row lock orders tenancy writes, so
-- revisions follow commit order.
CREATE TABLE tenancy.revision (
    only_row  boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    value     bigint NOT NULL
);
INSERT INTO tenancy.revision (value) VALUES (0);

ALTER TABLE tenancy.api_keys ADD COLUMN changed_rev bigint NOT NULL DEFAULT 0;
CREATE INDEX api_keys_changed ON tenancy.api_keys (changed_rev);

CREATE FUNCTION tenancy.bump_revision() RETURNS bigint LANGUAGE sql AS $$
    UPDATE tenancy.revision SET value = value + 1 RETURNING value
$$;

CREATE FUNCTION tenancy.key_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.changed_rev := tenancy.bump_revision();
    PERFORM pg_notify('leaky_config_changed', 'tenancy');
    RETURN NEW;
END
$$;

-- `last_used_at` is bookkeeping, not config: it does not bump the revision.
CREATE TRIGGER api_keys_changed BEFORE INSERT OR UPDATE OF org_id, key_sha256, tier, models, expires_at, revoked_at
    ON tenancy.api_keys FOR EACH ROW EXECUTE FUNCTION tenancy.key_changed();

CREATE FUNCTION tenancy.tier_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM tenancy.bump_revision();
    PERFORM pg_notify('leaky_config_changed', 'tenancy');
    RETURN NULL;
END
$$;

CREATE TRIGGER tiers_changed AFTER INSERT OR UPDATE OR DELETE ON tenancy.tiers
    FOR EACH STATEMENT EXECUTE FUNCTION tenancy.tier_changed();

-- Bounded context "config": the versions the config server pushed, and what each proxy made of them.
CREATE SCHEMA config;

CREATE TABLE config.versions (
    -- Monotonic across every control-plane replica: allocated under an advisory lock as max + 1.
    version          bigint PRIMARY KEY,
    -- `snapshot`: a full document (structural change); `keys`: a key delta on top of version - 1.
    kind             text NOT NULL CHECK (kind IN ('snapshot', 'keys')),
    -- Hex SHA-256 of the content: the structure's hash and the key set's digest.
    hash             text NOT NULL,
    -- The YAML base in force at this version (as sent to `PUT /v1/config/base`), for rollback, and
    -- the version that set it (the base's ETag: key and tier changes do not make a base edit stale).
    base             text NOT NULL,
    base_version     bigint NOT NULL,
    -- Tiers (from tenancy) and flags merged into the base at this version, in config-spec shape.
    tiers            jsonb NOT NULL,
    flags            jsonb NOT NULL,
    -- Key changes this version brings: {"upsert": [key...], "remove": [id...]}.
    delta            jsonb NOT NULL,
    -- XOR of the SHA-256 of every key entry (order-free; updated from deltas).
    keys_digest      text NOT NULL,
    -- The tenancy revision this version includes every change up to.
    tenancy_revision bigint NOT NULL,
    -- The full merged document (snapshot versions only; a key version is its parent plus `delta`).
    document         text,
    author           text NOT NULL,
    reason           text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now()
);

-- What each proxy reported for the versions pushed to it.
CREATE TABLE config.instances (
    instance        text PRIMARY KEY,
    acked_version   bigint,
    acked_at        timestamptz,
    nacked_version  bigint,
    nack_errors     jsonb,
    nacked_at       timestamptz,
    -- When a watch stream from this instance last opened.
    connected_at    timestamptz
);
