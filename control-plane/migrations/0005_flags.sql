-- Bounded context "flags": feature flags and their per-org overrides. Only the flags module reads or
-- writes this schema; the config server gets the flags through `flags::snapshot`.
CREATE SCHEMA flags;

CREATE TABLE flags.flags (
    -- The rules of leaky_config::model::flags::check_flag_name, repeated as a last line of defence.
    name             text PRIMARY KEY CHECK (name ~ '^[a-z0-9_-]{1,64}$'),
    enabled          boolean NOT NULL,
    rollout_percent  smallint NOT NULL DEFAULT 100 CHECK (rollout_percent BETWEEN 0 AND 100),
    description      text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    -- Bumped on every change to the flag or its overrides; the API's ETag.
    version          bigint NOT NULL DEFAULT 1
);

-- Overrides name the org as the config does (`keys[].org`, tenancy's org name), not by id: the
-- proxies evaluate flags against the name their keys carry. Renaming an org leaves its overrides
-- under the old name.
CREATE TABLE flags.org_overrides (
    flag        text NOT NULL REFERENCES flags.flags (name) ON DELETE CASCADE,
    org         text NOT NULL CHECK (char_length(org) BETWEEN 1 AND 100),
    enabled     boolean NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (flag, org)
);
